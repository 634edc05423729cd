//! End-to-end tests of the broker and sidecar binaries; the tests are in `tests/`.
