//! S13: three readers read the file in a tight loop while one writer replaces it. The
//! writer must not be starved (FIFO bounds its wait: it finishes its replaces while the
//! readers keep going), and no reader sees ENOENT, an empty or a partial file.

mod common;

use std::process::Child;
use std::time::Duration;

use common::writers::spawn_writer;
use common::{MountGuard, state_dir, wait_until};

/// Waits for `child` with a generous hang guard; kills it if the guard runs out.
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let done = wait_until(limit, || child.try_wait().unwrap().is_some());
    if !done {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (done && output.status.success(), text)
}

#[test]
fn s13_the_writer_gets_through_three_looping_readers() {
    let (_tmp, state) = state_dir();
    std::fs::write(state.join("store.json"), "{\"v\":0}").unwrap();
    let _mount = MountGuard::mount(&state, &[]);
    let dir = state.to_str().unwrap();
    let stop = state.parent().unwrap().join("stop-readers");
    let stop_arg = stop.to_str().unwrap();
    let readers: Vec<Child> = (0..3)
        .map(|_| {
            spawn_writer(
                "node",
                "node_reader.js",
                &[dir, "store.json", "--stop-file", stop_arg],
            )
        })
        .collect();
    // The readers are looping before the writer starts.
    std::thread::sleep(Duration::from_millis(500));
    let writer = spawn_writer("node", "node_replace.js", &[dir, "store.json", "w", "200"]);
    let (writer_ok, writer_out) = finish(writer, Duration::from_secs(240));
    std::fs::write(&stop, "").unwrap();
    let reader_results: Vec<(bool, String)> = readers
        .into_iter()
        .map(|reader| finish(reader, Duration::from_secs(60)))
        .collect();
    assert!(
        writer_ok,
        "the replacing writer did not finish 200 replaces: {writer_out}"
    );
    for (ok, out) in &reader_results {
        assert!(ok, "a reader saw ENOENT, an empty or a partial file: {out}");
        assert!(out.contains("\"enoent\":0"), "reader report: {out}");
    }
    let text = std::fs::read_to_string(state.join("store.json")).unwrap();
    assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
}
