#!/usr/bin/env bash
# End to end: the desktop app, started under a virtual X server on a tiny random-weight model,
# opens the lighthouse storyboard, renders every panel, and is photographed. Passes when the last
# panel is written, the app is still running, and the screenshot is not blank.
#
# Uses target/release/charaboard as `cargo test --release` leaves it (built if absent). Keeps the
# screenshot at target/e2e-screenshot.png; on failure, keeps the work folder and prints the app log.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release/charaboard
TIMEOUT_S=300
MIN_COLOURS=1000

[[ -x $BIN ]] || cargo build --release

TMP=$(mktemp -d -t charaboard-e2e.XXXXXX)
APP_PID=
XVFB_PID=
OK=0
cleanup() {
    # Every step runs even if one fails: a dead process must not keep the X server alive.
    set +e
    for pid in $APP_PID $XVFB_PID; do
        kill "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if ((OK)); then
        rm -rf "$TMP"
    else
        echo "e2e: work folder kept at $TMP" >&2
        if [[ -f $TMP/app.log ]]; then
            echo "--- app log (last 40 lines) ---" >&2
            tail -n 40 "$TMP/app.log" >&2
        fi
    fi
}
trap cleanup EXIT
fail() {
    echo "e2e: FAILED: $*" >&2
    exit 1
}

# A tiny model and the lighthouse storyboard at 128x128 and 6 steps, so the CPU renders it in
# seconds. The edits are checked, so a change to the example project's layout fails here and not
# as a mysterious render timeout.
"$BIN" tiny-model --out "$TMP/model" >"$TMP/tiny-model.log" 2>&1 || fail "tiny-model: $(cat "$TMP/tiny-model.log")"
sed -e 's/width: 1024/width: 128/' \
    -e 's/height: 1024/height: 128/' \
    -e 's/^\( *\)settings: ($/&\n\1    steps: Some(6),/' \
    projects/lighthouse-keeper.ron >"$TMP/story.ron"
grep -q 'width: 128,' "$TMP/story.ron" && grep -q 'height: 128,' "$TMP/story.ron" &&
    grep -q 'steps: Some(6),' "$TMP/story.ron" ||
    fail "could not shrink projects/lighthouse-keeper.ron (did its settings block change?)"

# The X server picks a free display itself and writes its number once it accepts clients.
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$TMP/display" 2>"$TMP/xvfb.log" &
XVFB_PID=$!
for _ in $(seq 100); do
    [[ -s $TMP/display ]] && break
    kill -0 "$XVFB_PID" 2>/dev/null || fail "Xvfb did not start: $(cat "$TMP/xvfb.log")"
    sleep 0.1
done
[[ -s $TMP/display ]] || fail "Xvfb did not report a display within 10 s"
export DISPLAY=":$(tr -d '[:space:]' <"$TMP/display")"
echo "e2e: Xvfb on $DISPLAY"

# X11 only: a Wayland socket inherited from a desktop session would take precedence in winit.
mkdir -m 700 "$TMP/xdg"
env -u WAYLAND_DISPLAY XDG_RUNTIME_DIR="$TMP/xdg" \
    "$BIN" "$TMP/story.ron" --model "$TMP/model" --render-on-start >"$TMP/app.log" 2>&1 &
APP_PID=$!

LAST="$TMP/story.images/panel-04.png"
start=$SECONDS
until [[ -f $LAST ]]; do
    kill -0 "$APP_PID" 2>/dev/null || fail "the app exited before rendering $LAST"
    ((SECONDS - start < TIMEOUT_S)) || fail "no $LAST after ${TIMEOUT_S} s"
    sleep 1
done
echo "e2e: all panels rendered in $((SECONDS - start)) s"
# Let the app show the last panel before the photograph.
sleep 3

kill -0 "$APP_PID" 2>/dev/null || fail "the app was no longer running when the screenshot was due"
import -window root "$TMP/screenshot.png" || fail "could not take a screenshot of $DISPLAY"
cp "$TMP/screenshot.png" target/e2e-screenshot.png
kill -0 "$APP_PID" 2>/dev/null || fail "the app exited while the screenshot was taken"

colours=$(identify -format %k "$TMP/screenshot.png") || fail "identify could not read the screenshot"
[[ $colours =~ ^[0-9]+$ ]] || fail "identify printed '$colours', not a colour count"
echo "e2e: screenshot has $colours unique colours (target/e2e-screenshot.png)"
((colours > MIN_COLOURS)) ||
    fail "the screenshot looks blank: $colours unique colours, expected more than $MIN_COLOURS"

OK=1
echo "e2e: passed"
