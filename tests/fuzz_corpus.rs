//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`: the seeds,
//! and each input that once crashed, kept as a regression) on the stable
//! toolchain, and a short deterministic mutation of each seed: every
//! prefix, and every byte flipped in a few ways. The coverage-guided runs
//! themselves are `cargo +nightly fuzz run <target>` (see README.md).

use std::path::Path;

use sluice::fuzzing::TARGETS;

/// The inputs of a target's corpus, with their file names.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new("fuzz/corpus").join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("readable corpus file"))
        })
        .collect();
    inputs.sort();
    inputs
}

/// Runs `run` on `input`, naming the target and the input when it panics.
fn check(target: &str, what: &str, input: &[u8], run: fn(&[u8])) {
    if let Err(panic) = std::panic::catch_unwind(|| run(input)) {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("fuzz target {target} failed on {what} ({input:02x?}): {message}");
    }
}

#[test]
fn every_target_has_a_seed_corpus_and_a_fuzz_target() {
    for (target, _) in TARGETS {
        assert!(
            !corpus(target).is_empty(),
            "fuzz/corpus/{target} holds no seed"
        );
        let source = Path::new("fuzz/fuzz_targets").join(format!("{target}.rs"));
        let text = std::fs::read_to_string(&source)
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            text.contains(&format!("sluice::fuzzing::{target}(")),
            "{} runs sluice::fuzzing::{target}",
            source.display()
        );
    }
}

#[test]
fn every_corpus_input_passes() {
    for (target, run) in TARGETS {
        for (name, input) in corpus(target) {
            check(target, &name, &input, *run);
        }
    }
}

#[test]
fn mutations_of_the_seeds_pass() {
    for (target, run) in TARGETS {
        for (name, input) in corpus(target) {
            if input.len() > 4096 {
                continue;
            }
            for end in 0..input.len() {
                check(target, &format!("{name} cut at {end}"), &input[..end], *run);
            }
            let mut mutated = input.clone();
            for at in 0..input.len() {
                for flip in [0xff, 0x80, 0x01] {
                    mutated[at] ^= flip;
                    check(
                        target,
                        &format!("{name} with byte {at} ^ {flip:#x}"),
                        &mutated,
                        *run,
                    );
                    mutated[at] ^= flip;
                }
            }
        }
    }
}
