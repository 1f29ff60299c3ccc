"""The PyMC side, in numpy: the batched simulator, the parameter space, the joint
log-density, the model's signature, vectorization and compilation, and the Laplace maps
of the flow's preconditioner."""
