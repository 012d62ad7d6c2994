//! The `junit` plugin as its own executable, installed with `hm plugin install`.

fn main() {
    hm_sdk::serve(hm_plugin_junit::plugin())
}
