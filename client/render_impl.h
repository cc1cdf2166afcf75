// Internal to render.cc and table_render.cc: one EventRenderer implementation per format.
#pragma once

#include <memory>
#include <ostream>

#include "client/render.h"

namespace sinkscope::client {

class EventRenderer::Impl {
 public:
  virtual ~Impl() = default;
  virtual void Render(const sinkscope::v1::JobEvent& ev) = 0;
  virtual void Finish() {}
};

std::unique_ptr<EventRenderer::Impl> MakeTableRenderer(const RenderOptions& o, std::ostream& out);

}  // namespace sinkscope::client
