/* common.h — types shared by every kernel header and by Rust (through bindgen).
 *
 * Headers under kernels/ are plain C11 so that bindgen can read them without CUDA headers:
 * device-only types get a same-size stand-in when not compiled by nvcc. Every struct passed to a
 * kernel is declared here or in a kernel's own header, with its size and field offsets asserted
 * both in C (SNUG_ASSERT_LAYOUT below, checked by nvcc) and in Rust (bindgen's layout tests). */
#ifndef SNUG_COMMON_H
#define SNUG_COMMON_H

#include <stdint.h>

#ifdef __CUDACC__
#include <cuda_bf16.h>
typedef __nv_bfloat16 snug_bf16;
#else
/* Same size and alignment as __nv_bfloat16; Rust sees half::bf16 storage. */
typedef uint16_t snug_bf16;
#endif

#ifdef __cplusplus
#include <cstddef>
#define SNUG_ASSERT_LAYOUT(type, field, offset) \
  static_assert(offsetof(type, field) == (offset), #type "." #field " offset differs from Rust")
#define SNUG_ASSERT_SIZE(type, size) static_assert(sizeof(type) == (size), #type " size differs from Rust")
#else
#define SNUG_ASSERT_LAYOUT(type, field, offset)
#define SNUG_ASSERT_SIZE(type, size)
#endif

#endif /* SNUG_COMMON_H */
