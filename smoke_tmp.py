import json, time, tempfile, pathlib
from tests.support import make_app
from tests.test_co_prescribing import _request
from cds_service.request_json import parse_hook_call, check_depth
from cds_service.hook_call import answer_hook
app = make_app(pathlib.Path(tempfile.mkdtemp()), hold_repeats={"enabled": False})
rt = app.extensions["cds_runtime"]()
body = _request(app, "cp-clarithromycin-draft", "order-sign")
d = next(e["resource"] for e in body["context"]["draftOrders"]["entry"] if e["resource"]["id"].endswith("-draft"))
d["medicationCodeableConcept"] = {"coding":[{"system":"http://www.nlm.nih.gov/research/umls/rxnorm","code":"308182","display":"amoxicillin 250 MG Oral Capsule"}]}
# pad prefetch to ~100KB
obs = body["prefetch"]["observations"]
while len(json.dumps(body)) < 100_000:
    obs["entry"] = obs["entry"] + obs["entry"][:5]
data = json.dumps(body).encode()
print("bytes", len(data))
svc = rt.service("tacrolimus-co-prescribing-sign")
def t(f, n=2000):
    f(); s=time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter()-s)/n*1e3
print("check_depth ms", t(lambda: check_depth(data)))
print("parse ms", t(lambda: parse_hook_call(data)))
print("parse+answer ms", t(lambda: answer_hook(parse_hook_call(data), svc, rt)))
print(answer_hook(parse_hook_call(data), svc, rt).body)
c = app.test_client()
print("http ms", t(lambda: c.post("/cds-services/tacrolimus-co-prescribing-sign", data=data, content_type="application/json"), 500))
print("http discovery-free no-op healthz ms", t(lambda: c.get("/healthz"), 500))
import cProfile, pstats
b = parse_hook_call(data)
pr = cProfile.Profile(); pr.enable()
for _ in range(500): answer_hook(parse_hook_call(data), svc, rt)
pr.disable(); pstats.Stats(pr).sort_stats("cumulative").print_stats(25)
