"""Results a hospital reads: FHIR R4 (:mod:`cxrfuse.interop.fhir`) and a DICOMweb PACS round
trip (:mod:`cxrfuse.interop.pacs`)."""
