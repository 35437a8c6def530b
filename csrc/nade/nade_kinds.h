// The `kind` argument of the native NADE entry points (nade_forward / nade_backward /
// nade_sample of both armodel_fast._C and armodel_fast._C_cuda): the table AF_NADE_KINDS at
// the end of nade_heads.h, one line per variant. Every kind switch (CPU launchers, CUDA
// kernels, CPU row-reference, argument checks) goes through visit_kind. Torch-free.
#pragma once

#include <cstdint>

#include "nade/nade_heads.h"

namespace af {
namespace nade {

// Names the head template of a kind: decltype(tag)::template Head<T>.
template <template <typename> class H> struct HeadTag {
  template <typename T> using Head = H<T>;
};

// f(HeadTag<Head>{}) for the head of `kind`; false (f not called) for an unknown kind.
template <class F> inline bool visit_kind(int64_t kind, F&& f) {
  switch (kind) {
#define AF_NADE_KIND_CASE(id, H, name) \
  case id:                             \
    f(HeadTag<H>{});                   \
    return true;
    AF_NADE_KINDS(AF_NADE_KIND_CASE)
#undef AF_NADE_KIND_CASE
    default:
      return false;
  }
}

// "0 (binary), 1 (categorical) or 2 (RNADE)" for error messages.
inline const char* kinds_text() {
#define AF_NADE_KIND_TEXT(id, H, name) #id " (" name "), "
  return AF_NADE_KINDS(AF_NADE_KIND_TEXT);
#undef AF_NADE_KIND_TEXT
}

}  // namespace nade
}  // namespace af
