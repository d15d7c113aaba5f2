//! What the spool's test files share.

use std::time::Duration;

/// Opens a spool this process had open a moment ago. sled releases its file
/// lock from background threads shortly after the last handle is dropped,
/// so a reopen in the same process may have to wait for that.
pub fn reopen<T, E: std::fmt::Debug>(mut open: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match open() {
            Ok(opened) => return opened,
            Err(e) if std::time::Instant::now() > deadline => panic!("reopen failed: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The spool's sled database itself, behind the spool's back (to tamper
/// with it). The spool creates sled with 8 MiB segments; sled insists on
/// the same.
pub fn raw_sled(dir: &std::path::Path) -> sled::Db {
    reopen(|| {
        sled::Config::new()
            .path(dir)
            .segment_size(8 << 20)
            .flush_every_ms(None)
            .open()
    })
}
