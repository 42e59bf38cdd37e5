//! Property tests: recordings round-trip, and no reader panics on arbitrary bytes.

use homeostat_traces::recording::{Header, Reader, Record, Writer};
use homeostat_traces::{read_from, Arch, Format, ReadOptions, Visitor};
use proptest::prelude::*;

/// Events that reference exe ids 0..n_exes; the test defines those first.
fn event(n_exes: u64) -> impl Strategy<Value = Record> {
    let task = (0u32..6, 0u32..4);
    prop_oneof![
        6 => (task.clone(), 0..n_exes, any::<u32>(), 0u64..(1 << 62)).prop_map(
            |((pid, t), exe_id, syscall, time_ns)| Record::Syscall {
                pid,
                tid: pid + t,
                exe_id,
                syscall,
                time_ns,
            }
        ),
        1 => (task.clone(), 0..n_exes).prop_map(|((pid, t), exe_id)| Record::Exec {
            pid,
            tid: pid + t,
            exe_id
        }),
        1 => task.prop_map(|(pid, t)| Record::Exit { pid, tid: pid + t }),
    ]
}

fn recording() -> impl Strategy<Value = (Header, Vec<Record>)> {
    (1u64..5).prop_flat_map(|n_exes| {
        let exes = proptest::collection::vec(
            (
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..40),
            ),
            n_exes as usize,
        );
        let header = (
            prop_oneof![Just(Arch::X86_64), Just(Arch::I386)],
            "[a-z0-9.-]{0,20}",
            0u64..(1 << 62),
            proptest::option::of("[ -~]{0,20}"),
        )
            .prop_map(|(arch, host, start_time_ns, kernel)| Header {
                arch,
                host,
                start_time_ns,
                kernel,
                tool: "homeostat test".into(),
            });
        (
            header,
            exes,
            proptest::collection::vec(event(n_exes), 0..200),
        )
            .prop_map(|(header, exes, events)| {
                let mut records: Vec<Record> = exes
                    .into_iter()
                    .enumerate()
                    .map(|(i, (dev, ino, path))| Record::Exe {
                        exe_id: i as u64,
                        dev,
                        ino,
                        path,
                    })
                    .collect();
                records.extend(events);
                (header, records)
            })
    })
}

#[derive(Default)]
struct Count {
    begins: u64,
    calls: u64,
    ends: u64,
}

impl Visitor for Count {
    fn begin(&mut self, _: u64, _: &str) {
        self.begins += 1;
    }
    fn call(&mut self, _: u64, _: u32) {
        self.calls += 1;
    }
    fn end(&mut self, _: u64) {
        self.ends += 1;
    }
}

proptest! {
    #[test]
    fn recording_round_trips((header, records) in recording()) {
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        for r in &records {
            w.record(r).unwrap();
        }
        let bytes = w.finish().unwrap();

        let mut reader = Reader::new(std::path::Path::new("p"), &bytes[..]).unwrap();
        prop_assert_eq!(reader.header(), &header);
        let mut back = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            back.push(r);
        }
        prop_assert_eq!(&back, &records);

        // The trace view sees every syscall once and closes every trace it opens.
        let mut c = Count::default();
        read_from("p", &bytes[..], Format::Recording, &ReadOptions::default(), &mut c).unwrap();
        let n_syscalls = records.iter().filter(|r| matches!(r, Record::Syscall { .. })).count();
        prop_assert_eq!(c.calls, n_syscalls as u64);
        prop_assert_eq!(c.begins, c.ends);
    }

    #[test]
    fn no_reader_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        for format in Format::ALL {
            let mut c = Count::default();
            let _ = read_from("junk", &bytes[..], format, &ReadOptions::default(), &mut c);
        }
        let _ = homeostat_traces::detect_format(&bytes);
    }

    #[test]
    fn no_reader_panics_on_mutated_recordings(
        (header, records) in recording(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut w = Writer::new(Vec::new(), &header).unwrap();
        for r in &records {
            w.record(r).unwrap();
        }
        let mut bytes = w.finish().unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let mut c = Count::default();
        let _ = read_from("m", &bytes[..], Format::Recording, &ReadOptions::default(), &mut c);
    }

    #[test]
    fn no_panic_on_strace_like_lines(lines in proptest::collection::vec(
        "([0-9]{1,6} +)?([0-9:.]{1,17} )?(\\[pid +[0-9]+\\] )?(<\\.\\.\\. [a-z_?]{0,8} resumed>|[a-z_?]{0,8}\\(|\\+\\+\\+ |--- )?[ -~]{0,20}( <unfinished \\.\\.\\.>)?",
        0..30,
    )) {
        let text = lines.join("\n");
        let mut c = Count::default();
        if read_from("s", text.as_bytes(), Format::Strace, &ReadOptions::default(), &mut c).is_ok() {
            prop_assert_eq!(c.begins, c.ends);
        }
    }
}
