"""Banks of simulations: in memory or on disk (netCDF, zarr), written in chunks, on
one machine or a Dask cluster."""
