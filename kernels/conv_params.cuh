// conv_params.cuh — ConvParams: the geometry every conv2d kernel takes, as ONE parameter passed by value
// after its pointers (x, w, b, y), instead of 19 scalar parameters repeated in every kernel; Conv3dParams:
// the same for a 3-D convolution (conv3d_igemm.cu), a ConvParams of the (H, W) plane plus the depth axis.
//
// The host fills it from the same definition's mirror, gpuconv/_cuda/abi.py (CONV_PARAMS_DTYPE, a NumPy
// structured dtype with these fields in this order; CuPy passes a one-element numpy.ndarray's bytes as a
// by-value kernel argument). tests/test_abi.py checks the two layouts against each other through the CPU
// emulator, field by field. Change both together, and keep the struct plain: ints only (natural 4-byte
// alignment, no padding), no constructors, no derived fields the host does not fill.
//
// Kernels declare it `const __grid_constant__ ConvParams cp` (CUDA 11.7+, sm_70+; an empty macro under the
// CPU emulator). A kernel parameter lives in the constant bank like the 19 scalars it replaces, and
// __grid_constant__ keeps the compiler treating its fields as it treated those scalars: read-only
// parameter memory, each field read where it is used (a constant-bank operand in SASS). Without it NVVM
// loads every field into a register at kernel entry and keeps it live across the loops: more registers,
// and conv2d_depthwise<float, 4, 5, 5> spilled (the main loops' machine code is otherwise as before; see
// tests/sass_check.py). The kernels copy the fields they use into local consts at the top of their body,
// under the old parameter names.
#pragma once

namespace gpuconv {

struct ConvParams {
    int N, C, H, W;  // input x: (N, C, H, W)
    int K, R, S;     // weights w: (K, C / groups, R, S)
    int groups;      // conv groups (C and K are multiples of it)
    int sh, sw;      // stride (rows, columns)
    int pt, pl;      // top / left zero padding (the bottom / right padding follows from P and Q)
    int dh, dw;      // dilation (rows, columns)
    int P, Q;        // output y: (N, K, P, Q)
    int flip;        // != 0: true convolution (weights rotated by 180 degrees)
    int has_bias;    // != 0: b holds K biases, else b is any valid pointer (unread)
    int act;         // fused activation, an Activation code (common.cuh)
};
static_assert(sizeof(ConvParams) == 19 * sizeof(int), "ConvParams: 19 ints, no padding (abi.py mirrors it)");

// A 3-D convolution x (N, C, D, H, W) -> y (N, K, OD, P, Q), w (K, C / groups, KD, R, S): hw is the ConvParams
// of the (H, W) plane (N, C, K, groups, the plane's sizes, strides, paddings, dilations, P, Q, and flip,
// has_bias, act for the whole convolution), then the depth axis. Mirrored by abi.py's CONV3D_PARAMS_DTYPE
// (hw as a nested ConvParams, then these ints); the same rules as ConvParams (ints only, no padding).
struct Conv3dParams {
    ConvParams hw;   // the (H, W) plane, as a conv2d kernel would take it
    int D, KD;       // input depth, filter depth
    int sd, pf, dd;  // depth stride, front zero padding (the back padding follows from OD), depth dilation
    int OD;          // output depth
};
static_assert(sizeof(Conv3dParams) == 25 * sizeof(int), "Conv3dParams: 25 ints, no padding (abi.py mirrors it)");

}  // namespace gpuconv
