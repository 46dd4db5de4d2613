"""Test models: random-weight models of the real architectures in each library's on-disk format
(``voxflow models build-random``, and the tests' tiny models). Their output is noise."""
