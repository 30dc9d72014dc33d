// The element types of the kernels' tensors, as the torch bindings (bindings.cpp) name them.
#pragma once

namespace mambaic {

enum class Element { kFloat32, kFloat16, kBFloat16 };

}  // namespace mambaic
