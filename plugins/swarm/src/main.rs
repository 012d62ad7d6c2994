fn main() {
    hm_sdk::serve(hm_plugin_swarm::plugin())
}
