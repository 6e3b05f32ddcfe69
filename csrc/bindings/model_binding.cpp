// Binds ecso::Model as ecso_edge._core.Model (held by shared_ptr: sessions keep it alive).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bindings/model_options_binding.hpp"
#include "bindings/registry.hpp"
#include "ecso/model.hpp"

namespace py = pybind11;

namespace ecso_bindings {

void register_model(py::module_ & m) {
    py::class_<ecso::Model, std::shared_ptr<ecso::Model>>(m, "Model", R"pbdoc(
A text model GGUF and its vision projector (mmproj), validated and loaded. Loading releases the GIL.
)pbdoc")
        .def(py::init([](const std::string & text_model_path, const std::string & mmproj_path, uint32_t n_ctx,
                         uint32_t n_batch, int32_t n_gpu_layers, bool mmproj_gpu, int32_t n_threads,
                         int32_t n_threads_batch,
                         std::optional<bool> flash_attn, std::optional<bool> repack, uint32_t seed, bool verbose,
                         uint64_t encoder_cache_mib) {
                 ecso::ModelOptions options = model_options(n_ctx, n_batch, n_gpu_layers, n_threads,
                                                            n_threads_batch, flash_attn, repack, verbose);
                 options.mmproj_gpu = mmproj_gpu;
                 options.seed = seed;
                 options.encoder_cache_mib = encoder_cache_mib;
                 py::gil_scoped_release release;
                 return std::make_shared<ecso::Model>(text_model_path, mmproj_path, options);
             }),
             py::arg("text_model_path"), py::arg("mmproj_path"), py::kw_only(), py::arg("n_ctx"), py::arg("n_batch"),
             py::arg("n_gpu_layers"), py::arg("mmproj_gpu"), py::arg("n_threads"),
             py::arg("n_threads_batch"), py::arg("flash_attn"), py::arg("repack"),
             py::arg("seed"), py::arg("verbose"), py::arg("encoder_cache_mib"))
        .def(
            "encoder_cache_info",
            [](const ecso::Model & mdl) {
                const ecso::EncoderCacheStats st = mdl.encoder_cache_stats();
                py::dict d;
                d["entries"] = st.entries;
                d["bytes"] = st.bytes;
                d["limit_bytes"] = st.limit_bytes;
                d["hits"] = st.hits;
                d["misses"] = st.misses;
                d["evictions"] = st.evictions;
                return d;
            },
            "The encoder outputs kept for the conversations of every session on this model: entries, bytes, "
            "the bound, hits, misses and evictions.")
        .def(
            "clear_encoder_cache", [](const ecso::Model & mdl) { mdl.clear_encoder_cache(); },
            "Drops the encoder outputs kept for every session on this model (the counters stay).")
        .def_property_readonly("text_model_path", [](const ecso::Model & mdl) { return mdl.text_info().path; })
        .def_property_readonly("mmproj_path", [](const ecso::Model & mdl) { return mdl.projector_info().path; })
        .def_property_readonly("architecture", [](const ecso::Model & mdl) { return mdl.text_info().architecture; })
        .def_property_readonly("projector_type",
                               [](const ecso::Model & mdl) { return mdl.projector_info().projector_type; })
        .def_property_readonly("projector_check", &ecso::Model::projector_check,
                               "How the projector was made safe to load before mtmd read it: 'tensor table' "
                               "(every tensor validated in process), 'child process' (loaded once in "
                               "ecso-check-projector first) or 'child process (cached)' (an earlier pass of this "
                               "file and llama.cpp build)")
        .def_property_readonly("image_size", [](const ecso::Model & mdl) { return mdl.projector_info().image_size; })
        .def_property_readonly("n_embd", &ecso::Model::n_embd)
        .def_property_readonly("n_ctx", [](const ecso::Model & mdl) { return mdl.options().n_ctx; })
        .def_property_readonly("n_ctx_train", &ecso::Model::n_ctx_train)
        .def_property_readonly("n_threads", &ecso::Model::n_threads)
        .def_property_readonly("n_threads_batch", &ecso::Model::n_threads_batch)
        .def_property_readonly("repack", &ecso::Model::repack,
                               "Whether the weights were repacked into the CPU backend's extra buffer types")
        .def_property_readonly("n_gpu_layers", [](const ecso::Model & mdl) { return mdl.options().n_gpu_layers; })
        .def_property_readonly("seed", [](const ecso::Model & mdl) { return mdl.options().seed; })
        .def_property_readonly(
            "chat_template",
            [](const ecso::Model & mdl) -> std::optional<std::string> {
                const std::string t = mdl.own_chat_template();
                return t.empty() ? std::nullopt : std::optional<std::string>(t);
            },
            "The chat template stored in the text GGUF, or None.")
        .def(
            "tokenize",
            [](const ecso::Model & mdl, const std::string & text, bool add_special, bool parse_special) {
                return mdl.tokenize(text, add_special, parse_special);
            },
            py::arg("text"), py::kw_only(), py::arg("add_special") = false, py::arg("parse_special") = false,
            "Token ids of `text` under the model's tokenizer.")
        .def(
            "token_bytes",
            [](const ecso::Model & mdl, int32_t token) { return py::bytes(mdl.token_piece(token)); },
            py::arg("token"), "The raw bytes of one token (may be part of a UTF-8 character).");
}

}  // namespace ecso_bindings
