"""The base of the package: configuration, seeds, errors, version compatibility,
progress bars and argument checks. Imports nothing else of pymc-abi."""
