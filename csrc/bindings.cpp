// Python binding of the CUDA sampling kernel (built as tts_engine._C by setup.py when CUDA is there).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

extern "C" cudaError_t tts_top_k_top_p_sample(const float* logits, int64_t rows, int64_t vocab,
                                              const float* temperature, const int32_t* top_k,
                                              const float* top_p, const float* uniform, int64_t* out,
                                              cudaStream_t stream);

// logits [rows, vocab] float32; temperature, top_p, uniform [rows] float32; top_k [rows] int32.
torch::Tensor top_k_top_p_sample(torch::Tensor logits, torch::Tensor temperature, torch::Tensor top_k,
                                 torch::Tensor top_p, torch::Tensor uniform) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2 && logits.scalar_type() == torch::kFloat32,
              "logits must be a 2-D float32 CUDA tensor");
  // launch on the logits' GPU (its current stream), whichever device is current
  const at::cuda::OptionalCUDAGuard device_guard(logits.device());
  logits = logits.contiguous();
  const int64_t rows = logits.size(0);
  for (const auto& t : {temperature, top_p, uniform}) {
    TORCH_CHECK(t.is_cuda() && t.scalar_type() == torch::kFloat32 && t.numel() == rows,
                "temperature, top_p and uniform must be float32 CUDA tensors with one value per row");
    TORCH_CHECK(t.device() == logits.device(), "all inputs must be on the logits' device");
  }
  TORCH_CHECK(top_k.is_cuda() && top_k.scalar_type() == torch::kInt32 && top_k.numel() == rows &&
                  top_k.device() == logits.device(),
              "top_k must be an int32 CUDA tensor on the logits' device with one value per row");
  auto out = torch::empty({rows}, logits.options().dtype(torch::kInt64));
  const cudaError_t err = tts_top_k_top_p_sample(
      logits.data_ptr<float>(), rows, logits.size(1), temperature.contiguous().data_ptr<float>(),
      top_k.contiguous().data_ptr<int32_t>(), top_p.contiguous().data_ptr<float>(),
      uniform.contiguous().data_ptr<float>(), out.data_ptr<int64_t>(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "top_k_top_p_sample kernel failed: ", cudaGetErrorString(err));
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("top_k_top_p_sample", &top_k_top_p_sample, "top-k / top-p sampling without a full sort");
}
