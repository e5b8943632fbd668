"""The partitioner's involuntary full rematerialisations, read from the compiler's log
(jaxvrl/fit/compiler_log.py) and counted per program by jaxvrl.fit, on the test process's 8 CPU
devices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from test_fit import cpu_report

from jaxvrl.fit import compiler_log

P = PartitionSpec


def _mesh() -> Mesh:
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


def _embedding_lookup(mesh: Mesh, table_spec: P):
    """Rows of a [vocab, embed] table gathered by batch-split ids, laid out by batch."""

    def lookup(table, ids):
        table = jax.lax.with_sharding_constraint(table, NamedSharding(mesh, table_spec))
        rows = jnp.take(table, ids, axis=0)
        return jax.lax.with_sharding_constraint(rows, NamedSharding(mesh, P(("data", "fsdp"))))

    table = jax.ShapeDtypeStruct((256, 128), jnp.float32, sharding=NamedSharding(mesh, P()))
    ids = jax.ShapeDtypeStruct((8, 64), jnp.int32, sharding=NamedSharding(mesh, P()))
    return jax.jit(lookup).lower(table, ids)


def test_a_gather_from_an_fsdp_split_table_is_counted_and_passed_on(capfd):
    mesh = _mesh()
    # The table split along embed over fsdp (as FSDP stores it): the gathered rows come out split
    # along embed, and batch-split rows can only be made by replicating them.
    with compiler_log.captured() as log:
        _embedding_lookup(mesh, P("tensor", "fsdp")).compile()
    assert compiler_log.involuntary_remats(log.text) >= 1
    assert all(
        "Involuntary full rematerialization" in x for x in compiler_log.remat_lines(log.text)
    )
    # The text still reaches descriptor 2 (the terminal or train.log) after the capture.
    assert "Involuntary full rematerialization" in capfd.readouterr().err
    # Gathered whole along embed first, the same lookup needs none.
    with compiler_log.captured() as log:
        _embedding_lookup(mesh, P("tensor", None)).compile()
    assert compiler_log.involuntary_remats(log.text) == 0


def test_fit_reports_no_involuntary_remats_in_any_program_of_the_demo(tiny_model):
    # The model on a 2x2x2 mesh. Its embedding gather (rows split along the embedding by the
    # FSDP-split table, wanted split by batch) and that gather's gradient were rematerialised in
    # every program that embeds tokens (4 in the SFT step, 4 in the reference log-probs, 8 in the
    # RL train step) until model.sharding.embedding_lookup hands the rows over by an all-to-all.
    report, out = cpu_report(tiny_model)
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    for p in report["programs"]:
        assert p["involuntary_remats"] == len(p["remat_lines"]) == 0, (p["name"], p["remat_lines"])
    assert report["involuntary_remats"] == 0
    assert "involuntary rematerialisations: 0" in out
