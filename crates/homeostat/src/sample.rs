//! The labelled sample of real traces recorded for homeostat (see data/sample/README.md),
//! compiled into the binary by build.rs.

include!(concat!(env!("OUT_DIR"), "/sample_files.rs"));
