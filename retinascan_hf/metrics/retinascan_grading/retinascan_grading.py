"""`evaluate` metric for diabetic retinopathy grading: `evaluate.load(retinascan_hf.metric_path())`.

A thin `evaluate.Metric` over `retinascan_hf.metrics.compute_grading_metrics`, so results are identical to
the `retinascan evaluate` report and to training's metrics. `evaluate` copies this file into its module
cache and checks each import line for an installed module: keep one module per import line.
"""

from __future__ import annotations

import datasets
import evaluate

from retinascan_hf.metrics.summary import DEFAULT_RESAMPLES, compute_grading_metrics

_DESCRIPTION = """
Grading metrics for ICDR diabetic retinopathy grades (0 no DR ... 4 proliferative DR): accuracy, quadratic and
linear weighted kappa, mean absolute error, off-by-one accuracy, macro and weighted F1, per-grade precision,
recall, F1 and support, the confusion matrix; screening figures for referable DR (grade >= 2) and
vision-threatening DR (grade >= 3): sensitivity, specificity, PPV, NPV and AUROC (from predicted grade
probabilities, ranking by P(grade >= cut)); expected calibration error (15 bins) and Brier score; and 95%
percentile-bootstrap confidence intervals for QWK, accuracy and the screening figures (resampling patients
when patient ids are given). Undefined values are None, never NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): decided grades.
    references (`list` of `int`): true grades.
    probabilities (`list` of `list` of `float`, *optional*): one grade distribution per image (rows sum to 1);
        needed for AUROC, ECE and Brier score.
    patient_ids (`list` of `str`, *optional*): the patient of each image; the bootstrap then resamples patients.
    num_labels (`int`, defaults to 5): number of grades.
    referable_grade (`int`, defaults to 2), vision_threatening_grade (`int`, defaults to 3): screening cut-offs.
    n_bins (`int`, defaults to 15): confidence bins of the ECE.
    n_bootstrap (`int`, defaults to 1000): bootstrap resamples; 0 skips the confidence intervals.
    confidence (`float`, defaults to 0.95), seed (`int`, defaults to 0): interval level and resampling seed.
Returns:
    `dict`: `accuracy`, `qwk`, `linear_kappa`, `mae`, `off_by_one_accuracy`, `f1_macro`, `f1_weighted`,
    `per_grade`, `confusion_matrix`, `referable`, `vision_threatening`, `ece`, `brier`, `confidence_intervals`.
Examples:
    >>> import evaluate, retinascan_hf
    >>> metric = evaluate.load(retinascan_hf.metric_path())
    >>> metric.compute(predictions=[0, 2, 3], references=[0, 2, 4], n_bootstrap=0)["accuracy"]
    0.6666666666666666
"""

_CITATION = """
@article{cohen1968weighted, title={Weighted kappa}, author={Cohen, Jacob}, journal={Psychological Bulletin},
  volume={70}, number={4}, pages={213--220}, year={1968}}
@inproceedings{guo2017calibration, title={On Calibration of Modern Neural Networks}, author={Guo, Chuan and
  Pleiss, Geoff and Sun, Yu and Weinberger, Kilian Q.}, booktitle={ICML}, year={2017}}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetinascanGrading(evaluate.Metric):
    """ICDR grading and screening metrics with bootstrap confidence intervals."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(
        self,
        predictions,
        references,
        probabilities=None,
        patient_ids=None,
        num_labels: int = 5,
        referable_grade: int = 2,
        vision_threatening_grade: int = 3,
        n_bins: int = 15,
        n_bootstrap: int = DEFAULT_RESAMPLES,
        confidence: float = 0.95,
        seed: int = 0,
    ) -> dict:
        return compute_grading_metrics(
            references,
            predictions,
            probabilities,
            patient_ids,
            num_labels=num_labels,
            referable_grade=referable_grade,
            vision_threatening_grade=vision_threatening_grade,
            n_bins=n_bins,
            n_bootstrap=n_bootstrap,
            confidence=confidence,
            seed=seed,
        )
