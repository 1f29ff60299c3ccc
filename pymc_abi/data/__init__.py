"""What one dataset is: the data description (observed variables, covariates,
varying dims), the summary networks' inputs, dataset checks and the two-level design."""
