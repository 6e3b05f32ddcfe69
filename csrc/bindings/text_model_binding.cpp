// Binds ecso::TextModel as ecso_edge._core.TextModel (held by shared_ptr: sessions keep it alive).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bindings/model_options_binding.hpp"
#include "bindings/registry.hpp"
#include "ecso/text_model.hpp"

namespace py = pybind11;

namespace ecso_bindings {

void register_text_model(py::module_ & m) {
    py::class_<ecso::TextModel, std::shared_ptr<ecso::TextModel>>(m, "TextModel", R"pbdoc(
A text-only GGUF (a guard model), validated and loaded. Loading releases the GIL.
)pbdoc")
        .def(py::init([](const std::string & path, uint32_t n_ctx, uint32_t n_batch, int32_t n_gpu_layers,
                         int32_t n_threads, int32_t n_threads_batch, std::optional<bool> flash_attn,
                         std::optional<bool> repack, bool verbose, const std::string & chat_template) {
                 const ecso::ModelOptions options = model_options(n_ctx, n_batch, n_gpu_layers, n_threads,
                                                                  n_threads_batch, flash_attn, repack, verbose);
                 py::gil_scoped_release release;
                 return std::make_shared<ecso::TextModel>(path, options, chat_template);
             }),
             py::arg("path"), py::kw_only(), py::arg("n_ctx"), py::arg("n_batch"), py::arg("n_gpu_layers"),
             py::arg("n_threads"), py::arg("n_threads_batch"), py::arg("flash_attn"), py::arg("repack"),
             py::arg("verbose"), py::arg("chat_template") = "")
        .def_property_readonly("path", &ecso::TextModel::path)
        .def_property_readonly("architecture", &ecso::TextModel::architecture)
        .def_property_readonly("n_ctx", [](const ecso::TextModel & t) { return t.options().n_ctx; })
        .def_property_readonly("n_threads", &ecso::TextModel::n_threads)
        .def_property_readonly("n_threads_batch", &ecso::TextModel::n_threads_batch)
        .def_property_readonly(
            "chat_template",
            [](const ecso::TextModel & t) -> std::optional<std::string> {
                const std::string tmpl = t.own_chat_template();
                return tmpl.empty() ? std::nullopt : std::optional<std::string>(tmpl);
            },
            "The chat template stored in the GGUF, or None.")
        .def_property_readonly("framing_template", &ecso::TextModel::chat_template,
                               "The template prompts are framed with: the one given at load, else the GGUF's.");
}

}  // namespace ecso_bindings
