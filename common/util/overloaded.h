// std::visit helper: Overloaded{[](const A&) {...}, [](const B&) {...}} builds one visitor from lambdas.
#pragma once

namespace sinkscope {

template <class... Ts>
struct Overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
Overloaded(Ts...) -> Overloaded<Ts...>;

}  // namespace sinkscope
