"""Every kernel specialisation the launchers use compiles for an H100/H200 (sm_90).

The interpreter accepts code that the compiler rejects (globals that are not
constexpr, unsupported casts...), so CI also compiles for a real target: no
GPU is needed. The script also checks the PTX for approximate division,
contractible float arithmetic and flushed subnormals (docs/ARCHITECTURE.md, 3).
"""


import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

KERNELS = {"column_minmax_kernel", "dequantize_tile_kernel", "dequantize_units_kernel",
           "finalize_qparams_kernel",
           "fused_units_kernel", "mse_sweep_kernel", "quantize_tile_kernel",
           "segment_minmax_kernel", "key_histogram_kernel", "tensor_select_kernel",
           "unit_sort_select_kernel", "unit_radix_select_kernel", "unit_histogram_kernel"}


@pytest.mark.slow
def test_all_specialisations_compile_for_sm90():
    from ptx_checks import compile_report

    report = compile_report("compile_kernels.py")
    assert report["problems"] == []
    assert set(report["kernels"]) == KERNELS
    assert report["compiled"] > 100


def test_ptx_checks_catch_what_they_look_for():
    from ptx_checks import problems_in

    assert problems_in("k", "div.full.f32 %r1, %r2, %r3;")
    assert problems_in("k", "fma.rn.f32 %r1, %r2, %r3, %r4;")
    assert problems_in("k", "mul.f32 %r1, %r2, %r3;")  # contractible by ptxas
    assert problems_in("k", "add.rn.ftz.f32 %r1, %r2, %r3;")
    assert not problems_in("k", "mul.rn.f32 %r1, %r2, %r3;\n\tdiv.rn.f32 %r4, %r1, %r2;")


def test_store_width_check_catches_byte_stores():
    from ptx_checks import narrow_code_stores

    assert narrow_code_stores("k", "st.global.b8 [%rd1], %rs1;")
    assert narrow_code_stores("k", "st.global.v2.u8 [%rd1], {%rs1, %rs2};")
    assert not narrow_code_stores("k", "st.global.v2.b32 [%rd1], {%r1, %r2};")
    assert not narrow_code_stores("k", "st.global.b32 [%rd1], %r1;")
