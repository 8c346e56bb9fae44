"""Image in and its checks: upload parsing, decoding (JPEG, PNG, DICOM), the shared crop, the not-an-MRI checks."""
