"""Hypercore 11.37.1 vectors (copied from ../shared/vectors): reproduced byte for byte."""

import json
from pathlib import Path

import pytest

from corelog import _crypto, _flat

VECTORS = sorted((Path(__file__).parent / "vectors").glob("hypercore11-*.json"))


@pytest.fixture(params=VECTORS, ids=lambda p: p.stem)
def vec(request):
    return json.loads(request.param.read_text())


def test_vectors_present():
    assert len(VECTORS) >= 2


def test_namespaces_keys_manifest(vec):
    assert _crypto.TREE.hex() == vec["namespaces"]["TREE"]
    assert _crypto.MANIFEST.hex() == vec["namespaces"]["MANIFEST"]
    assert _crypto.DEFAULT_NAMESPACE.hex() == vec["namespaces"]["DEFAULT_NAMESPACE"]
    public, secret = _crypto.keypair_from_seed(bytes.fromhex(vec["seed"]))
    assert public.hex() == vec["publicKey"]
    assert secret.hex() == vec["secretKey"]
    manifest = _crypto.manifest_for(public)
    assert manifest.hex() == vec["manifestEncoded"]
    key = _crypto.log_key(manifest)
    assert key.hex() == vec["key"]
    assert _crypto.discovery_key(key).hex() == vec["discoveryKey"]


def _replay(store, vec):
    """Append/truncate as the generator did, checking every head on the way."""
    log = store.get("vector", key_seed=bytes.fromhex(vec["seed"]))
    assert log.key.hex() == vec["key"]
    blocks = [bytes.fromhex(b) for b in vec["blocks"]]
    after = [bytes.fromhex(b) for b in vec["blocksAfterTruncate"]]
    pos = apos = 0
    for head in vec["heads"]:
        what = head["after"]
        n = int(what.split()[1])
        if what.startswith("truncate"):
            log.truncate(n)
        elif "after truncate" in what:
            log.append(after[apos : apos + n])
            apos += n
        else:
            # single blocks through the single-append path, batches through the batch path
            log.append(blocks[pos] if n == 1 else blocks[pos : pos + n])
            pos += n
        h = log.head()
        assert (h.length, h.fork, h.byte_length) == (head["length"], head["fork"], head["byteLength"]), what
        assert h.tree_hash.hex() == head["treeHash"], what
        assert h.signable(log.key).hex() == head["signable"], what
        assert len(h.signable(log.key)) == 112
        assert h.encoded_signature.hex() == head["signature"], what
        assert len(h.encoded_signature) == 68
        roots = [{"index": r.index, "size": r.size, "hash": r.hash.hex()} for r in log.roots()]
        assert roots == head["roots"], what
    return log


def test_heads_and_truncation(store, vec):
    log = _replay(store, vec)
    assert log.audit().ok


def test_every_node_before_and_after_truncate(make_store, vec):
    s = make_store()
    log = s.get("vector", key_seed=bytes.fromhex(vec["seed"]))
    log.append([bytes.fromhex(b) for b in vec["blocks"]])
    want = {n["index"]: (n["size"], n["hash"]) for n in vec["nodes"]}
    # every complete subtree of the full log is stored, and nothing else
    got = {}
    for x in range(2 * len(vec["blocks"]) - 1):
        lo, hi = _flat.leaf_span(x)
        if hi <= len(vec["blocks"]):
            n = log.get_node(x)
            got[x] = (n.size, n.hash.hex())
    assert got == want

    s2 = make_store()
    log2 = _replay(s2, vec)
    want2 = {n["index"]: (n["size"], n["hash"]) for n in vec["nodesAfterTruncate"]}
    got2 = {}
    for x in range(2 * log2.length - 1):
        if _flat.leaf_span(x)[1] <= log2.length:
            n = log2.get_node(x)
            got2[x] = (n.size, n.hash.hex())
    assert got2 == want2
    # and nothing stale survives the truncation: the stored nodes are exactly these
    with s2._env.begin() as txn:
        stored = log2._stored_nodes(txn, 0, 2**63)
    assert sorted(stored) == sorted(want2)
    assert [bytes(b).hex() for b in log2][-len(vec["blocksAfterTruncate"]) :] == vec["blocksAfterTruncate"]
