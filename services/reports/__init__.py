"""The similar-cases report: what it shows (content), one PDF page (pdf), the Encapsulated PDF and Comprehensive SR
DICOM objects that go back into the query's own study (dicom_pdf, sr), with deterministic UIDs (uids), all built by
`build.build_report`; trigger, delivery and deliver send them to the PACS."""
