"""The zero-overhead certificate of an exported artifact: structure (the proof), parity, latency, one verdict.

- :mod:`~taslora_deploy.certificate.structure`: structure facts of an artifact and their comparison;
- :mod:`~taslora_deploy.certificate.equivalence`: THE latency decision (one-sided: not slower than 1 + margin);
- :mod:`~taslora_deploy.certificate.schedule`: the looks of a test and their alpha-spending levels;
- :mod:`~taslora_deploy.certificate.latency`: the certificate's sequential latency test on a runner pair and THE
  latency-test policy (``EXPORT_TEST``, ``RECHECK_TEST``);
- :mod:`~taslora_deploy.certificate.document`: the certificate document (tolerances, probe, verdict, digest,
  write / checked read, ONNX metadata_props);
- :mod:`~taslora_deploy.certificate.steps`: the export's certificate steps;
- :mod:`~taslora_deploy.certificate.check`: re-checks of a shipped export against its certificates.

Nothing is imported here: import the submodule you need.
"""
