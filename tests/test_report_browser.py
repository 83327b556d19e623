"""report.html in a real headless Chromium: the plot decodes, the table's sorting and filtering work, the page is
not blank. Skipped where no Chromium is installed (`.ci/run` installs Debian's where it can)."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from autoresearch.report import write_report
from report_journal import Spec, night, write

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium) to render report.html")

# Appended to a copy of the page, after its own script: drives the table as a reader would and writes what it saw.
PROBE = """<pre id="probe"></pre><script>
(function(){
  var t=document.getElementById('experiments'), heads=t.tHead.rows[0].cells, img=document.getElementById('progress-plot');
  function ids(){return Array.prototype.filter.call(t.tBodies[0].rows,function(r){return !r.hidden;})
                 .map(function(r){return +r.getAttribute('data-id');});}
  function head(name){return Array.prototype.filter.call(heads,function(h){return h.textContent===name;})[0];}
  var out={initial:document.getElementById('shown').textContent, rows:t.tBodies[0].rows.length,
           img:[img.complete, img.naturalWidth, img.naturalHeight, Math.round(img.getBoundingClientRect().height)]};
  head('#').click(); out.asc=ids(); head('#').click(); out.desc=ids();
  head('val_bpb').click(); out.by_metric=ids();
  var status=document.getElementById('status-filter'); status.value='crash'; status.dispatchEvent(new Event('change'));
  out.crash=ids(); out.crash_shown=document.getElementById('shown').textContent;
  status.value=''; status.dispatchEvent(new Event('change'));
  var text=document.getElementById('filter'); text.value='LEARNING RATE'; text.dispatchEvent(new Event('input'));
  out.text=ids();
  document.getElementById('probe').textContent=JSON.stringify(out);
})();
</script></body>"""


def chromium(*args, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={tmp / 'profile'}", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    specs = night(40, 6, seed=4) + [Spec("crash", None, "raise the learning rate to 9", reason="exit code 1"),
                                    Spec("running", None, "try value embeddings")]
    ledger = write(tmp, specs)
    return tmp, ledger, write_report(ledger, False, tmp / "report")


def test_the_table_sorts_and_filters_and_the_plot_decodes(report):
    tmp, ledger, written = report
    probe = written.html.with_name("probe.html")
    probe.write_text(written.html.read_text(encoding="utf-8").replace("</body>", PROBE, 1), encoding="utf-8")
    result = chromium("--dump-dom", probe.as_uri(), tmp=tmp)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found and found.group(1), dom[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    rows = ledger.rows()
    ids = [r.id for r in rows]
    assert seen["rows"] == len(rows) and seen["initial"] == f"{len(rows)} of {len(rows)} experiments shown"  # its JS ran
    assert seen["img"][:3] == [True, 1600, 800] and seen["img"][3] > 300  # the embedded PNG decoded and is shown
    assert seen["asc"] == ids and seen["desc"] == ids[::-1]
    measured = sorted((r for r in rows if r.metric is not None), key=lambda r: (r.metric, r.id))
    assert seen["by_metric"][:len(measured)] == [r.id for r in measured]  # numbers sort as numbers, blanks last
    assert sorted(seen["crash"]) == [r.id for r in rows if r.status == "crash"]
    assert seen["crash_shown"] == f"{len(seen['crash'])} of {len(rows)} experiments shown"
    wanted = {r.id for r in rows if "learning rate" in r.description.lower()}
    assert wanted and set(seen["text"]) == wanted
    assert len(re.findall(r'<tr id="e\d+" data-id=', dom)) == len(rows)


def test_the_screenshot_shows_the_page(report):
    tmp, ledger, written = report
    shot = tmp / "shot.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1400,2000", "--hide-scrollbars", written.html.as_uri(), tmp=tmp)
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1400, 2000)
        rgb = image.convert("RGB")
        inked = sum(rgb.convert("L").histogram()[:240])
        assert inked > 0.02 * 1400 * 2000  # far from blank: text, cards, the plot, tables (about 5% here)
        top = rgb.crop((0, 0, 1400, 1000))  # the plot is at the top of the page: its green points and step line
        r, g, b = (np.asarray(top, dtype=int)[..., i] for i in range(3))
        greens = int(((g > 150) & (r < 120) & (b < 150) & (g - r > 60)).sum())
        assert greens > 500
