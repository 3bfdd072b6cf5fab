//! `io/blkif.h`: the block device ring (requests, segments, responses, operations).
