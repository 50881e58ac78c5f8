"""smallNORB-format data: the binary format and files (`norb`), the Dataset, the viewpoint splits, the
paper's transforms, download (`fetch`) and checks (`norb_verify`), and the rendered stand-in (`render`)."""
