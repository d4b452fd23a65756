//! Our own errors (a hook's, a weight backend's) through candle's `Result`, causes intact.

/// `e` as a candle error whose `source()` chain is `e`'s, so that the anyhow error a caller gets
/// back still shows every cause (`{:#}`) and finds the root (`root_cause`, `downcast_ref`).
/// candle's `Msg` and `Wrapped` keep only a message; its transparent `Io` variant passes the
/// message and `source()` through, and `io::Error::other` is std's carrier for foreign errors.
pub fn to_candle(e: anyhow::Error) -> candle_core::Error {
    candle_core::Error::Io(std::io::Error::other(e))
}
