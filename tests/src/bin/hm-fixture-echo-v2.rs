//! Fixture plugin `echo` 2.0.0 (see `hm_tests::fixture::echo_plugin`): a different build of the
//! same plugin, to upgrade to and to shadow with.

fn main() {
    hm_sdk::serve(hm_tests::fixture::echo_plugin("2.0.0"))
}
