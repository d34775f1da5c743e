# TEMPORARY minimal scanner: replaced by the full catalog-driven scanner (logscan branch).
import re, time
from dataclasses import dataclass
@dataclass
class Hit:
    sig_id: str; category: str; severity: str; line_no: int; text: str; proc: str|None=None; hint_zh: str=""; hint_en: str=""; rung: str|None=None
@dataclass
class RootCause:
    line_no: int; text: str; exception: str|None=None; proc: str|None=None; sig_id: str|None=None; category: str|None=None
FAIL=[("engine-fatal", "false-ready", r"EngineCore encountered a fatal error"), ("worker-exc","false-ready", r"WorkerProc hit an exception"), ("engine-start","startup", r"Engine core initialization failed"), ("arch","unsupported-architecture", r"are not supported for now")]
class LogScanner:
    def __init__(self, catalog=None):
        self.buf=""; self.line_no=0; self.phase="starting"; self.hits=[]; self.stopped_at=None; self.evidence={}; self.evidence_lines={}; self.last_line_at=time.monotonic(); self.exc=[]
    def feed(self, data):
        if isinstance(data, bytes): data=data.decode("utf-8","replace")
        self.buf+=data; new=[]
        parts=re.split(r"[\r\n]", self.buf); self.buf=parts.pop()
        for line in parts:
            self.line_no+=1; self.last_line_at=time.monotonic()
            if "Application startup complete" in line: self.phase="ready"
            elif "Warming up" in line: self.phase="warming up"
            elif "Starting to load model" in line: self.phase="loading weights"
            m=re.search(r"\b(\w+(Error|Exception)): (.*)", line)
            if m and self.stopped_at is None: self.exc.append(RootCause(self.line_no, line.strip(), m.group(1)))
            for sid,cat,rx in FAIL:
                if re.search(rx,line):
                    h=Hit(sid,cat,"failure",self.line_no,line.strip()); new.append(h)
                    if self.stopped_at is None: self.hits.append(h)
        return new
    def finish(self): 
        if self.buf: self.feed("\n")
    def mark_stop(self): self.stopped_at=self.line_no
    def failures(self, since_line=0): return [h for h in self.hits if h.line_no>since_line]
    def root_cause(self, since_line=0):
        for e in self.exc:
            if e.line_no>since_line: return e
        f=self.failures(since_line); return RootCause(f[0].line_no,f[0].text) if f else None
    def to_dict(self): return {"hits":[h.__dict__ for h in self.hits], "evidence":self.evidence, "phases":[]}
