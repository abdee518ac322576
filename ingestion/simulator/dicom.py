"""Synthetic DICOM Part 10 files: tiny DX images with the identifying tags a real modality writes, so that the
gateway's PS3.15 de-identification has something to remove."""

from __future__ import annotations

import io

import numpy as np

from ingestion.simulator.codes import DX_SOP_CLASS
from ingestion.simulator.generate import DicomStudy

IMPLEMENTATION_UID = "2.25.302215617331985240932512946786434325157"  # careloop simulator (UUID-derived root)


def render_dicom(spec: DicomStudy, size: int = 32) -> bytes:
    """A valid Part 10 file (explicit VR little endian) for one instance; deterministic for the spec."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = spec.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_SOP_CLASS
    ds.SOPInstanceUID = spec.sop_uid
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.Modality = "DX"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = spec.when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = spec.when.strftime("%H%M%S")
    ds.AccessionNumber = spec.accession
    ds.StudyID = spec.accession[-8:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDescription = "XR CHEST PA"
    ds.BodyPartExamined = "CHEST"
    ds.PatientName = spec.patient_name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date.strftime("%Y%m%d")
    ds.PatientSex = spec.sex
    ds.InstitutionName = spec.institution
    ds.ReferringPhysicianName = spec.referring.replace(" ", "^", 1)
    ds.OperatorsName = spec.operator.replace("RT ", "").replace(" ", "^", 1)
    ds.Manufacturer = spec.manufacturer
    ds.ManufacturerModelName = spec.model
    ds.StationName = f"XR{spec.accession[:1]}01"
    ds.DeviceSerialNumber = f"SN{spec.pixel_seed % 100000:05d}"
    ds.KVP = 120
    ds.PixelSpacing = [0.15, 0.15]
    ds.PatientOrientation = ["P", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(spec.pixel_seed)
    yy, xx = np.mgrid[0:size, 0:size]
    lungs = np.exp(-(((xx - size * 0.3) ** 2 + (yy - size / 2) ** 2) / (size * 2.0)))
    lungs += np.exp(-(((xx - size * 0.7) ** 2 + (yy - size / 2) ** 2) / (size * 2.0)))
    img = (2000 - 1200 * lungs + rng.normal(0, 60, (size, size))) * spec.gain
    ds.PixelData = np.clip(img, 0, 65535).astype("<u2").tobytes()
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
