"""vlp.distributed: RNG states saved and restored by kind; one process gathers to itself."""

import random

import numpy as np
import torch

from vlp.distributed import all_gather_with_grad, gather_objects, rank_and_world, rng_states, set_rng_states


def test_states_of_some_kinds_restore_those_and_leave_the_others():
    saved = rng_states(("torch",))
    assert set(saved) == {"torch"}
    expected = torch.rand(4)
    py_before = random.random()
    set_rng_states(saved)
    assert torch.equal(torch.rand(4), expected)
    assert random.random() != py_before  # python's generator was not put back


def test_all_states_round_trip():
    saved = rng_states()
    assert {"torch", "python", "numpy"} <= set(saved)
    expected = (torch.rand(2), random.random(), np.random.rand())
    set_rng_states(saved)
    assert (torch.equal(torch.rand(2), expected[0]), random.random(), np.random.rand()) == (True, *expected[1:])


def test_one_process_is_rank_0_of_1_and_gathers_to_itself():
    x = torch.randn(3, 2, requires_grad=True)
    assert rank_and_world() == (0, 1)
    assert all_gather_with_grad(x) is x
    assert gather_objects({"a": 1}) == [{"a": 1}]
