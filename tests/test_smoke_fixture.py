def test_tiny_lm_loads(tiny_lm):
    assert tiny_lm.n_params < 5_000_000
    assert tiny_lm.placement == "system"
