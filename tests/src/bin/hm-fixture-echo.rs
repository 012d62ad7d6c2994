//! Fixture plugin `echo` 1.0.0 (see `hm_tests::fixture::echo_plugin`): the registry tests
//! install it from a bundle, an executable, a cargo build output and an index.

fn main() {
    hm_sdk::serve(hm_tests::fixture::echo_plugin("1.0.0"))
}
