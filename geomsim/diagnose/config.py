"""Settings of `python -m geomsim.diagnose`."""

from __future__ import annotations

from dataclasses import dataclass

from geomsim.config import ConfigError, at_least, each, in_range, one_of, option, positive


@dataclass(frozen=True)
class DiagnoseConfig:
    """What to measure on the user's model and how far to forecast (units: t = steps x lr, nats)."""

    model: str = option("", help="pkg.module:factory, where factory() returns a geomsim Landscape "
                        "(theta0, align_loss, task_loss) or a geomsim.diagnose.AlignedModel (or use --hf)")
    hf: str = option("", help="a Hugging Face checkpoint folder (config.json, *.safetensors, tokenizer.json: "
                     "Llama, Qwen2/3, Gemma 1/2/3, GPT-2); needs --align and --task")
    align: str = option("", help="with --hf: JSONL of the behaviour to keep ({prompt, response} or {messages}); "
                        "L_A is the mean NLL of its response tokens")
    task: str = option("", help="with --hf: JSONL of the benign fine-tuning data (same format); L_F")
    dtype: str = option("float32", help="with --hf: the weights' dtype during the diagnosis: float32 | float64 | "
                        "bfloat16 | checkpoint (as stored)", check=one_of("float32", "float64", "bfloat16",
                                                                            "checkpoint"))
    max_length: int = option(0, help="with --hf: truncate each example to this many tokens (0 = no limit)",
                             check=at_least(0))
    batch_size: int = option(0, help="with --hf: examples per batch (0 = one batch per set)", check=at_least(0))
    loss_chunk: int = option(1024, help="with --hf: response positions per chunk of the logits (the losses, "
                             "their derivatives and the GGN / Fisher products hold one chunk at a time) (>= 1)",
                             check=at_least(1))
    # Measured on random Llama models of 9M-349M parameters (benchmarks/RESULTS.md): remat cut the
    # HVP program's memory per parameter from 27-37 to 13-27 bytes and its time by 5-20%.
    remat: bool = option(True, help="with --hf: recompute each block's activations in the backward pass "
                         "(--no-remat to keep them)")
    params: str = option("", help="with --hf: comma-separated patterns of tensor names (fnmatch, e.g. "
                         "'model.layers.3.*' or '*.mlp.*'); the curvature is of those alone ('' = all)")
    lora_rank: int = option(0, help="with --hf: measure in the space of rank-r LoRA adapters (B = 0 at theta0; "
                            "0 = full parameters) (0..1024)", check=in_range(0, 1024))
    lora_targets: str = option("q_proj,v_proj", help="with --lora-rank: modules that get adapters, comma-separated "
                               "(e.g. q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; GPT-2: c_attn)")
    lora_alpha: float = option(0.0, help="with --lora-rank: LoRA's alpha; the update is (alpha / r) B A "
                               "(0 = r, scale 1)", check=at_least(0))
    rank: int = option(4, help="dimension k of the alignment subspace S (>= 1)", check=at_least(1))
    operator: str = option("hessian", help="alignment curvature: hessian | ggn | fisher (ggn and fisher need an "
                           "AlignedModel: apply_fn, params and batches)", check=one_of("hessian", "ggn", "fisher"))
    task_model: str = option("hessian", help="local model of the task loss: hessian | gauss_newton (PSD, bounded "
                             "below) | linearized (the network linearised at theta0 under its true loss, L_A exact "
                             "along the path; gd only, small models: it stores Krylov-depth copies of the task "
                             "outputs) (gauss_newton and linearized need an AlignedModel)",
                             check=one_of("hessian", "gauss_newton", "linearized"))
    optimizer: str = option("flow", help="the fine-tune to forecast: flow | gd | adam | adamw (optax's)",
                            check=one_of("flow", "gd", "adam", "adamw"))
    lr: float = option(1e-2, help="step size of gd, adam, adamw; time t = steps x lr (> 0)", check=positive)
    adam_eps: float = option(1e-8, help="adam / adamw: eps of the update g / (sqrt(v) + eps) (optax's default) "
                             "(> 0)", check=positive)
    b1: float = option(0.9, help="adam / adamw: decay of the first moment (optax's default); the pilot's steps use it, "
                       "the zero-step forecast (Adam's flow limit) does not depend on it, in [0, 1)",
                       check=in_range(0, 1, open_hi=True))
    b2: float = option(0.999, help="adam / adamw: decay of the second moment (optax's default); the pilot's steps "
                       "use it, the zero-step forecast does not depend on it, in [0, 1)",
                       check=in_range(0, 1, open_hi=True))
    weight_decay: float = option(1e-4, help="adamw: decoupled weight decay (optax's default) (>= 0)",
                                 check=at_least(0))
    minibatch: bool = option(False, help="gd / adam / adamw: each step takes one task batch, drawn at random "
                             "(weighted by its examples): gd's forecasts add the batches' gradient noise and cross "
                             "where 1 in 20 draw sequences does; Adam's second moment is E_b[g_b^2] (default: full "
                             "batch)")
    calibration: str = option("", help="JSON of calibrated forecast errors the verdict's interval uses ('' = the one "
                              "shipped, from the testbed's measured fine-tunes; none = uncalibrated; or your own, same "
                              "schema)", shown="shipped")
    defenses: tuple[str, ...] = option(
        ("static_projection", "curvature_projection", "replay"), shown="static_projection,curvature_projection,replay",
        help="defenses forecast beside the undefended fine-tune, a comma list of static_projection, "
        "curvature_projection, replay (none = no defense table)",
        check=each(one_of("none", "static_projection", "curvature_projection", "replay")))
    replay: float = option(0.1, help="replay defense: weight beta of the alignment loss added to the task loss (> 0)",
                           check=positive)
    defense_growth: int = option(1, help="curvature_projection: growth directions of D^3 L_A added to S0 (>= 1)",
                                 check=at_least(1))
    min_task_progress: float = option(0.5, help="a defense is recommended only if it keeps this fraction of the "
                                      "undefended task-loss decrease at the undefended crossing (0..1)",
                                      check=in_range(0, 1))
    pilot_steps: int = option(0, help="a pilot: run this many real steps of --optimizer first, then rescale each "
                              "forecast by the measured alignment-loss increase (it only moves the verdict earlier; a "
                              "crossing within the pilot is measured); 0 = forecast before any fine-tuning (0..100000)",
                              check=in_range(0, 100000))
    horizon: float = option(0.0, help="last forecast time t (> 0; 0 = 10 / ||H_F||)", check=at_least(0))
    threshold: float = option(1e-2, help="alignment-loss increase that counts as failure, nats (> 0)",
                              check=positive)
    krylov: int = option(0, help="Lanczos depth m of the local models (0 = min(d, 32))", check=at_least(0))
    trace_samples: int = option(0, help="probes of the alignment spectrum's tail-mass estimate (0 skips it; no "
                                "forecast uses it) (0..1000)", check=in_range(0, 1000))
    points: int = option(64, help="forecast times, log-spaced over 4 decades up to the horizon (8..2000)",
                         check=in_range(8, 2000))
    resamples: int = option(0, help="repeat the measurement with this many new PRNG keys and bootstrap draws of "
                            "the batches; the report gives t_fail quantiles per method (0..1000)",
                            check=in_range(0, 1000))
    seed: int = option(0, help="PRNG seed of the Lanczos starts and trace probes (>= 0)", check=at_least(0))
    mesh: str = option("", help="DATAxMODEL device mesh over every device (all processes'): examples split over "
                       "DATA devices, each parameter over MODEL (FSDP); '' = one device (needs an AlignedModel)")

    def check(self) -> None:
        if self.hf:
            if self.model:
                raise ConfigError("hf: give either --model or --hf, not both")
            for name in ("align", "task"):
                if not getattr(self, name):
                    raise ConfigError(f"{name}: --hf needs --{name} FILE.jsonl")
        elif self.params or self.lora_rank:
            raise ConfigError("params: --params and --lora-rank go with --hf")
        elif ":" not in self.model:
            raise ConfigError(f"model: must be pkg.module:factory, or give --hf DIR (got {self.model!r})")
        elif self.align or self.task:
            raise ConfigError("align: --align and --task go with --hf (a --model factory brings its own data)")
        if self.task_model == "linearized" and self.optimizer != "gd":
            raise ConfigError(f"task_model: linearized forecasts gradient descent steps; give --optimizer gd "
                              f"(got {self.optimizer})")
        if self.task_model == "linearized" and self.hf:
            raise ConfigError("task_model: linearized stores Krylov-depth copies of the task logits, too large for "
                              "an --hf model's vocabulary; use hessian or gauss_newton")
        if self.minibatch and self.optimizer == "flow":
            raise ConfigError("minibatch: goes with --optimizer gd|adam|adamw (gradient flow has no steps to draw "
                              "batches for)")
        if "none" in self.defenses and len(self.defenses) > 1:
            raise ConfigError(f"defenses: none means no defense table and goes alone (got {','.join(self.defenses)})")
        if len(set(self.defenses)) < len(self.defenses):
            raise ConfigError(f"defenses: each at most once (got {','.join(self.defenses)})")
        if self.mesh:
            self.mesh_shape()

    def mesh_shape(self) -> tuple[int, int] | None:
        """`(data, model)` from `mesh` (None: one device)."""
        if not self.mesh:
            return None
        data, _, model = self.mesh.partition("x")
        if not (data.isdigit() and model.isdigit() and int(data) >= 1 and int(model) >= 1):
            raise ConfigError(f"mesh: expected DATAxMODEL with positive integers, e.g. 2x4 (got {self.mesh!r})")
        return int(data), int(model)
