# One racing writer of `lockfs demo`: json.load, add the key ID-N, write a
# NamedTemporaryFile in the same directory, os.replace it over the store.
import json, os, sys, tempfile
store, writer, cycles = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(cycles):
    with open(store) as f:
        data = json.load(f)
    data[f"{writer}-{i}"] = i
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(store), delete=False) as tmp:
        json.dump(data, tmp)
    os.replace(tmp.name, store)
