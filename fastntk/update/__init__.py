"""The unlearning update (docs/theory.md for the formulas, docs/guide.md for which options fit which model).

How one request runs (:func:`fastntk.unlearn.unlearn`, :mod:`.oneshot`)::

    options (.options)  ->  plan (.plan)  ->  inputs (.inputs)  ->  route  ->  do-no-harm check (.guard)  ->  result (.result)
                                                                    MSE: .forms (dual / primal / woodbury / dense) + .steps
                                                                    CE:  .tilted (tilted Newton steps, .newton, .objective)

=================  ======================================================================================
``options``        typed frozen options: ``UnlearnOptions`` (+ ``SolverOptions``, ``JacobianOptions``,
                   ``HarmTolerance``, ``NewtonOptions``), ``build_options`` (keyword fields -> options)
``policy``         the variant for ``trained_with`` (linearization point, anchor, kernel, steps)
``plan``           every ``"auto"`` resolved once with its reason; refused combinations before any work
``inputs``         data sets, model state, scalars, targets (typed errors, nothing changed)
``forms``          the MSE forms and the one ridge fit ``(G_S + λI)⁻¹ J_Sᵀ z_S``
``dense``          float64 Gram matrices, Cholesky factors (parameter / kernel space), Woodbury, dense NTK
``solve``          ``SolveContext``: CG through :mod:`fastntk.solvers` on torch tensors, every solve a ``SolveResult``
``steps``          relinearized Gauss-Newton steps after the first MSE update
``tilted``         the CE route: tilted Gauss-Newton steps (``newton``: the iteration; ``objective``: the losses)
``guard``          the do-no-harm check
``prepared``       the prepared MSE ``Unlearner`` (``prepared_ce``: the CE one; ``requests``: what they share)
``ridge``          ``match_ridge``: the matched ridge of an MSE model
``replay``         replaying the fine-tuning recipe on the linearized model
``challenge``      the NeurIPS 2023 challenge adapter ``unlearning``
``result``         ``UnlearnResult`` (``plan``, solves, timings)
=================  ======================================================================================
"""
