#!/usr/bin/env bash
# End to end: the desktop app, started under a virtual X server on a tiny random-weight model,
# opens the lighthouse storyboard, renders every panel, has a cell clicked to open the inspector,
# and is photographed. Passes when the last panel is written, the app is still running, the
# screenshot is not blank, and with the inspector open every cell the app reports (its
# --layout-report) lies inside the grid's width, left of the inspector, and every cell in view
# has a rendered picture in the screenshot at that place.
#
# Uses target/release/charaboard as `cargo test --release` leaves it (built if absent). Keeps the
# screenshot at target/e2e-screenshot.png; on failure, keeps the work folder and prints the app log.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=target/release/charaboard
TIMEOUT_S=300
MIN_COLOURS=1000
# A rendered cell (its picture, title and state) has many more colours than an empty frame.
MIN_CELL_COLOURS=100
CELLS=(identity panel-1 panel-2 panel-3 panel-4)

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
    "$BIN" "$TMP/story.ron" --model "$TMP/model" --render-on-start \
    --layout-report "$TMP/layout" >"$TMP/app.log" 2>&1 &
APP_PID=$!

# A take's key file is written last, after its picture and overlays.
LAST="$TMP/story.images/panel-04-take-001.key.ron"
start=$SECONDS
until [[ -f $LAST ]]; do
    kill -0 "$APP_PID" 2>/dev/null || fail "the app exited before rendering $LAST"
    ((SECONDS - start < TIMEOUT_S)) || fail "no $LAST after ${TIMEOUT_S} s"
    sleep 1
done
echo "e2e: all panels rendered in $((SECONDS - start)) s"
# Let the app show the last panel, then open the inspector as a user does: click a cell.
sleep 3
kill -0 "$APP_PID" 2>/dev/null || fail "the app exited after rendering"
WINDOW=$(xdotool search --name ' - charaboard$' | head -n 1)
[[ -n $WINDOW ]] || fail "no window named '... - charaboard' on $DISPLAY"
eval "$(xdotool getwindowgeometry --shell "$WINDOW")" # sets X, Y, WIDTH, HEIGHT
# rect NAME: prints "x0 y0 x1 y1" of NAME in the app's layout report (window pixels).
rect() { awk -v n="$1" '$1 == n { print $2, $3, $4, $5; found = 1 } END { exit !found }' "$TMP/layout"; }
read -r x0 y0 x1 y1 < <(rect panel-2) || fail "the layout report has no panel-2: $(cat "$TMP/layout")"
xdotool mousemove --window "$WINDOW" $(((x0 + x1) / 2)) $(((y0 + y1) / 2)) click 1
for _ in $(seq 50); do
    rect inspector >/dev/null && break
    sleep 0.1
done
rect inspector >/dev/null || fail "clicking panel 2 did not open the inspector: $(cat "$TMP/layout")"
# The inspector slides in; let it settle.
sleep 2

kill -0 "$APP_PID" 2>/dev/null || fail "the app was no longer running when the screenshot was due"
import -window root "$TMP/screenshot.png" || fail "could not take a screenshot of $DISPLAY"
cp "$TMP/screenshot.png" target/e2e-screenshot.png
kill -0 "$APP_PID" 2>/dev/null || fail "the app exited while the screenshot was taken"

colours=$(identify -format %k "$TMP/screenshot.png") || fail "identify could not read the screenshot"
[[ $colours =~ ^[0-9]+$ ]] || fail "identify printed '$colours', not a colour count"
echo "e2e: screenshot has $colours unique colours (target/e2e-screenshot.png)"
((colours > MIN_COLOURS)) ||
    fail "the screenshot looks blank: $colours unique colours, expected more than $MIN_COLOURS"

# Every cell inside the grid's width and left of the inspector (none cut off at the side; rows
# below the window scroll), and every cell in view drawn with its picture.
read -r vx0 vy0 vx1 vy1 < <(rect viewport) || fail "the layout report has no viewport"
read -r ix0 _ _ _ < <(rect inspector)
((vx0 >= 0 && vx1 <= WIDTH && vx1 <= ix0)) ||
    fail "the grid ($vx0..$vx1) is not inside the window (0..$WIDTH) left of the inspector ($ix0)"
in_view=0
for cell in "${CELLS[@]}"; do
    read -r x0 y0 x1 y1 < <(rect "$cell") || fail "the layout report has no $cell: $(cat "$TMP/layout")"
    ((x0 >= vx0 && x1 <= vx1 && y0 >= vy0)) ||
        fail "$cell ($x0 $y0 $x1 $y1) is not inside the grid ($vx0 $vy0 $vx1 $vy1)"
    ((y1 <= vy1)) || { echo "e2e: $cell below the fold (reached by scrolling)"; continue; }
    crop="$((x1 - x0))x$((y1 - y0))+$((X + x0))+$((Y + y0))"
    n=$(convert "$TMP/screenshot.png" -crop "$crop" +repage -format %k info:) ||
        fail "could not crop $cell ($crop) from the screenshot"
    ((n > MIN_CELL_COLOURS)) || fail "$cell ($crop) has $n colours in the screenshot: not drawn?"
    echo "e2e: $cell at $crop, $n colours"
    in_view=$((in_view + 1))
done
((in_view >= 2)) || fail "only $in_view cells in view beside the open inspector"

OK=1
echo "e2e: passed"
