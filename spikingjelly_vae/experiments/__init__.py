"""The paper's experiments beyond Table I, for any spiking VAE with ``posterior_spikes``/``prior_spikes``/
``encode``/``decode``: decoder robustness (Table II, Fig. 5, 12), the encoder probe (Table III), latent
firing-rate analysis (Fig. 4, 6, 7) and synaptic-operation / energy estimates."""
from .analysis import latent_rates, rate_histogram, rate_summary, run_analysis
from .classify import ProbeMLP, ProbeOptions, extract_features, run_classify, train_probe
from .energy import E_AC_PJ, E_MAC_PJ, OpCounter, fan_out_count, per_image
from .robustness import bit_flip, evaluate_robustness, gaussian_noise, run_robustness, time_shuffle

__all__ = ["latent_rates", "rate_histogram", "rate_summary", "run_analysis", "ProbeMLP", "ProbeOptions", "extract_features",
           "run_classify", "train_probe", "E_AC_PJ", "E_MAC_PJ", "OpCounter", "fan_out_count", "per_image",
           "bit_flip", "evaluate_robustness", "gaussian_noise", "run_robustness", "time_shuffle"]
