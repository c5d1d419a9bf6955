"""Cost of the shard-tar checksum (issue 16.9) on an NSD-shape tar: 2000 samples of fMRI 24×512, low/high
512 (float16), written through the shard writer (hashed while writing), then verified and read.

    python benchmarks/tar_checksum_cost.py /tmp/tar_checksum

Prints the tar's size and write time, the SHA-256 of its bytes in memory, the first verification
(``tars.verify_tar``: stat + SHA-256 of the file) and a later one (a stat), and one full read and decode
of its samples for comparison.  Writes one tar under the given folder.
"""
import json, os, sys, time
from pathlib import Path
import numpy as np
from foundation.data.shards import _TarSink, _npy_bytes
from foundation.data import loader, tars
from foundation.core.integrity import file_digest

out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)
sink = _TarSink(out, "train", "subj01", 2000)
fmri = rng.standard_normal((24, 512)).astype(np.float16)
low = rng.standard_normal(512).astype(np.float16)
t = time.perf_counter()
for i in range(2000):
    key = f"nsd/subj01/{i:07d}"
    sink.write(key, {"fmri.npy": _npy_bytes(fmri), "labels.npy": _npy_bytes(np.zeros(80, np.uint8)),
                     "low.npy": _npy_bytes(low), "high.npy": _npy_bytes(low),
                     "json": json.dumps({"dataset": "nsd", "subject": "subj01", "stimulus": str(i), "split": "train", "index": i}).encode()})
sink.close()
write_s = time.perf_counter() - t
entry = sink.done[0]
path = str(out / entry["path"])
size = os.path.getsize(path)
data = Path(path).read_bytes()
import hashlib
t = time.perf_counter(); hashlib.sha256(data).hexdigest(); hash_mem = time.perf_counter() - t
want = {"sha256": entry["sha256"], "bytes": entry["bytes"]}
tars._VERIFIED.clear()
t = time.perf_counter(); tars.verify_tar(path, want); first = time.perf_counter() - t
t = time.perf_counter()
for _ in range(1000):
    tars.verify_tar(path, want)
again = (time.perf_counter() - t) / 1000
t = time.perf_counter()
n = sum(1 for s in tars.read_tars([{"url": path}], expected={path: 2000}) if loader.decode(s))
read = time.perf_counter() - t
print(f"tar: {size/1e6:.1f} MB, 2000 samples; written (hashed while writing) in {write_s:.2f} s; "
      f"sha256 of its bytes in memory {hash_mem*1e3:.0f} ms")
print(f"verify_tar first open {first*1e3:.0f} ms ({size/1e6/first:.0f} MB/s); later opens {again*1e6:.1f} us (one stat)")
print(f"reading + decoding its {n} samples once (read_tars + decode): {read*1e3:.0f} ms; "
      f"first verification = {100*first/read:.0f}% of one read")
