// The VR ward page's own code: a file, not inline, so the page's Content-Security-Policy
// needs no hash or 'unsafe-inline' for it (dashboard/headers.py).
const beds = document.getElementById('beds');
const entities = new Map();
let soundOn = false, audio = null;
const highSeen = new Set();
let lastBeds = [];  // the latest state's beds: the alert actions' targets
const trends = new Map();  // patient id -> sparklines, asked for every TREND_EVERY polls
const TREND_EVERY = 10;
let polls = 0;

document.getElementById('sound').addEventListener('click', () => {
  soundOn = !soundOn;
  document.getElementById('sound').textContent = soundOn ? 'Sound off' : 'Sound on';
  if (soundOn && !audio) { audio = new AudioContext(); }
});

// Alarm sounds coded by priority as IEC 60601-1-8:2006 (+A1:2012) asks of auditory alarm
// signals: Table 3 (the burst) and Table 4 (the pulse).
//   high:   a burst of 10 pulses, spaced x, x, 2x+td, x | 0.35-1.30 s | x, x, 2x+td, x
//           (the "3 + 2, 3 + 2" rhythm), repeated every 2.5-15 s while the condition lasts;
//   medium: 3 pulses spaced y, y, repeated every 2.5-30 s;
//   low:    1 or 2 pulses spaced y, repeated after more than 15 s or not at all;
//   x 50-125 ms, y 125-250 ms (pulse spacing: end of one pulse to the start of the next);
//   pulse duration td 75-200 ms (high), 125-250 ms (medium, low); rise time 10-20 % of td;
//   fundamental 150-1000 Hz with at least 4 harmonics between 300 and 4000 Hz.
// The values chosen inside those ranges are below; the test holds them to the ranges.
const ALARM = {
  high: {td: 0.1, gap: 0.1, pause: 0.6, pulses: 10, every: 7.0, f0: 480},
  medium: {td: 0.2, gap: 0.2, pulses: 3, every: 15.0, f0: 440},
  low: {td: 0.2, gap: 0.2, pulses: 2, every: null, f0: 400},  // once per new alert
};

// Pulse start times and durations of one burst, in seconds from its start.
function alarmPattern(priority) {
  const a = ALARM[priority], out = [];
  let t = 0;
  for (let i = 0; i < a.pulses; i++) {
    out.push([t, a.td]);
    const k = i % 5;  // the high burst: pulses 1-5, then 6-10 alike
    let space = a.gap;
    if (priority === 'high') {
      space = k === 2 ? 2 * a.gap + a.td : (k === 4 ? a.pause : a.gap);
    }
    t += a.td + space;
  }
  return out;
}
window.alarmPattern = alarmPattern;  // both read by tests/dashboard/test_presence.py
window.alarmSettings = ALARM;

let wave = null;
function pulse(at, td, f0) {
  // the fundamental and its 2nd-5th harmonics (all within 300-4000 Hz for f0 400-800 Hz)
  if (!wave) {
    wave = audio.createPeriodicWave(new Float32Array([0, 0, 0, 0, 0, 0]),
                                    new Float32Array([0, 1, 0.6, 0.45, 0.35, 0.3]));
  }
  const o = audio.createOscillator(), g = audio.createGain();
  o.setPeriodicWave(wave); o.frequency.value = f0;
  const rise = 0.15 * td, peak = 0.05;  // rise and fall 15 % of td (Table 4: 10-20 %)
  g.gain.setValueAtTime(0, at);
  g.gain.linearRampToValueAtTime(peak, at + rise);
  g.gain.setValueAtTime(peak, at + td - rise);
  g.gain.linearRampToValueAtTime(0, at + td);
  o.connect(g); g.connect(audio.destination); o.start(at); o.stop(at + td + 0.01);
}

function burst(priority) {
  if (!soundOn || !audio) { return; }
  const t0 = audio.currentTime + 0.05;
  for (const [t, td] of alarmPattern(priority)) { pulse(t0 + t, td, ALARM[priority].f0); }
  document.body.dataset.lastAlarm = priority;
}

// The ward's alarm signal follows its highest-priority alert that is not acknowledged: a burst
// at once for a new alert, then again every `every` seconds while one of that priority lasts.
let lastBurst = {priority: null, at: 0};
function soundAlarms(beds) {
  const rank = {high: 3, medium: 2, low: 1};
  let top = null;
  for (const b of beds) {
    for (const a of b.alerts) {
      if (a.state === 'acknowledged') { continue; }
      if (!top || rank[a.priority] > rank[top]) { top = a.priority; }
    }
  }
  document.body.dataset.alarm = top || '';
  if (!top) { lastBurst = {priority: null, at: 0}; return; }
  const now = performance.now() / 1000, every = ALARM[top].every;
  const fresh = beds.some(b => b.alerts.some(a => a.priority === top
                                               && !highSeen.has(a.alert_id)));
  for (const b of beds) { for (const a of b.alerts) { highSeen.add(a.alert_id); } }
  if (fresh || (every !== null && lastBurst.priority === top && now - lastBurst.at >= every)
      || (every !== null && lastBurst.priority !== top)) {
    burst(top);
    lastBurst = {priority: top, at: now};
  }
}

function fmt(v, digits) { return v === null || v === undefined ? '--' : v.toFixed(digits); }

// a value with the twin's uncertainty: "92 ±3"
function pm(v, sd, digits) {
  return fmt(v, digits) + (sd === null || sd === undefined || v === null || v === undefined
    ? '' : ' ±' + sd.toFixed(digits));
}
// twin/news2.py COMPONENTS, the RCP 2017 chart's order
const PART_NAMES = {respiration_rate: 'RR', spo2: 'SpO2', air_or_oxygen: 'O2',
                    systolic_bp: 'SBP', pulse: 'HR', consciousness: 'ACVPU', temperature: 'T'};

function panelText(b) {
  const v = b.vitals, sd = b.sd || {};
  const lines = [
    b.patient_id + '  ' + (b.ward || '-') + '/' + (b.bed || '-') + '  #' + b.rank,
    // the band in words and shape, not the panel's colour alone
    'NEWS2 ' + (b.news2 === null ? 'no data' : b.news2) + '  ' + b.band_label
      + (b.stale && b.news2 !== null ? '  STALE' : ''),
    'HR ' + pm(v.hr, sd.hr, 0) + '/min  RR ' + pm(v.rr, sd.rr, 0) + '/min',
    'SpO2 ' + pm(v.spo2, sd.spo2, 0) + '%  SBP ' + pm(v.sbp, sd.sbp, 0) + ' mmHg',
    'Temp ' + pm(v.temp, sd.temp, 1) + ' Cel',
  ];
  // in the RCP 2017 chart's order (PART_NAMES'), whatever order the JSON keys came in
  const got = b.news2_parts || {};
  const parts = Object.keys(PART_NAMES).filter(k => k in got);
  if (parts.length) {
    lines.push('= ' + parts.map(k => PART_NAMES[k] + ' ' + got[k]).join(' + '));
  }
  if (b.alerts.length) {
    lines.push('ALERT ' + b.alerts.map(a => a.priority + ' ' + a.kind
      + (a.state === 'acknowledged' ? ' (ack)' : '')).join(', '));
  }
  return lines;
}

// One sparkline: the last hour's estimates (solid) and the twin's forecast (dashed, its 90 %
// band shaded), on a scale that holds both.
function sparkline(g, x0, y0, w, h, label, t) {
  g.fillStyle = '#ffffffb0'; g.fillRect(x0, y0, w, h);
  g.fillStyle = '#111'; g.font = '22px sans-serif'; g.fillText(label, x0 + 4, y0 + 20);
  if (!t || (!t.past.length && !t.ahead.length)) { return; }
  const vals = t.past.map(p => p[1]).concat(...t.ahead.map(a => [a[1], a[2], a[3]]))
    .filter(v => v !== null && v !== undefined);
  if (!vals.length) { return; }
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (hi - lo < 1e-6) { lo -= 1; hi += 1; }
  const span = 60 + Math.max(0, ...t.ahead.map(a => a[0]));  // minutes shown: -60 .. ahead
  const X = m => x0 + 4 + (w - 8) * (m + 60) / span;
  const Y = v => y0 + h - 4 - (h - 28) * (v - lo) / (hi - lo);
  const last = t.past.length ? t.past[t.past.length - 1] : null;
  if (t.ahead.length && last) {
    g.fillStyle = '#1f5f9f33';
    g.beginPath(); g.moveTo(X(0), Y(last[1]));
    t.ahead.forEach(a => g.lineTo(X(a[0]), Y(a[3] ?? a[1])));
    [...t.ahead].reverse().forEach(a => g.lineTo(X(a[0]), Y(a[2] ?? a[1])));
    g.closePath(); g.fill();
  }
  g.strokeStyle = '#111'; g.lineWidth = 3; g.setLineDash([]);
  g.beginPath();
  t.past.forEach((p, i) => (i ? g.lineTo(X(p[0]), Y(p[1])) : g.moveTo(X(p[0]), Y(p[1]))));
  g.stroke();
  if (t.ahead.length && last) {
    g.strokeStyle = '#1f5f9f'; g.setLineDash([8, 6]);
    g.beginPath(); g.moveTo(X(0), Y(last[1]));
    t.ahead.forEach(a => g.lineTo(X(a[0]), Y(a[1])));
    g.stroke(); g.setLineDash([]);
  }
}

// Panels are drawn on a canvas texture: A-Frame's text component loads its font from a CDN, and
// the dashboard must work on an offline hospital network.
function drawPanel(e, b, lines) {
  const cv = e._canvas, g = cv.getContext('2d');
  g.fillStyle = b.colour; g.fillRect(0, 0, cv.width, cv.height);
  g.fillStyle = '#111';
  lines.forEach((l, i) => {
    g.font = (i < 2 ? 'bold ' : '') + (i < 5 ? '34px' : '26px') + ' sans-serif';
    g.fillText(l, 14, 42 + i * 44, cv.width - 24);
  });
  // the sparklines under the text: 60 min past and the forecast ahead
  const tr = trends.get(b.patient_id) || {};
  const series = Object.values(tr);
  e.dataset.sparkPast = series.reduce((n, t) => n + t.past.length, 0);
  e.dataset.sparkAhead = series.reduce((n, t) => n + t.ahead.length, 0);
  [['HR', 'hr'], ['RR', 'rr'], ['SpO2', 'spo2'], ['SBP', 'sbp']].forEach(([label, ch], i) => {
    sparkline(g, 8 + (i % 2) * 252, 352 + Math.floor(i / 2) * 78, 244, 72, label, tr[ch]);
  });
  const mesh = e.querySelector('.panel').getObject3D('mesh');
  if (mesh && mesh.material && mesh.material.map) { mesh.material.map.needsUpdate = true; }
}

function add(parent, tag, attrs) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) { el.setAttribute(k, String(v)); }
  parent.appendChild(el);
  return el;
}

function create(b) {
  const cv = document.createElement('canvas');
  cv.id = 'panel-' + b.patient_id; cv.width = 512; cv.height = 512; cv.style.display = 'none';
  document.body.appendChild(cv);
  const e = document.createElement('a-entity');
  e._canvas = cv;
  e.setAttribute('class', 'patient');
  e.setAttribute('id', 'bed-' + b.patient_id);
  e.dataset.patientId = b.patient_id;
  // Built element by element, never from markup: a patient id is data, not HTML.
  add(e, 'a-box', {class: 'bed', width: 1, height: 0.45, depth: 2, color: '#f7f7f7',
                   position: '0 0.25 0'});
  add(e, 'a-box', {class: 'pillow', width: 0.7, height: 0.1, depth: 0.35, color: '#ffffff',
                   position: '0 0.52 -0.75'});
  add(e, 'a-box', {class: 'chest', width: 0.45, height: 0.18, depth: 0.5, color: '#8fb3d9',
                   position: '0 0.6 -0.2'});
  add(e, 'a-sphere', {class: 'heart', radius: 0.07, color: '#d7263d',
                      position: '0.08 0.75 -0.25'});
  const panel = add(e, 'a-plane', {class: 'panel', width: 1.6, height: 1.6,
                                   position: '0 2.05 0'});
  panel.setAttribute('material', {src: cv, shader: 'flat'});  // the element, not a selector
  add(e, 'a-sphere', {class: 'beacon', radius: 0.12, color: '#ff1a1a', position: '0 3.05 0',
                      visible: 'false', animation: 'property: scale; from: 0.6 0.6 0.6; '
                        + 'to: 1.2 1.2 1.2; dir: alternate; loop: true; dur: 500'});
  add(e, 'a-ring', {class: 'halo', 'radius-inner': 1.25, 'radius-outer': 1.45,
                    color: '#d7263d', rotation: '-90 0 0', position: '0 0.015 0',
                    visible: 'false'});
  beds.appendChild(e);
  return e;
}

function update(b) {
  let e = entities.get(b.patient_id);
  if (!e) { e = create(b); entities.set(b.patient_id, e); }
  e.setAttribute('position', b.x + ' 0 ' + b.z);
  const lines = panelText(b);
  drawPanel(e, b, lines);
  e.dataset.vitals = lines.join('\n');
  e.querySelector('.heart').setAttribute('beat', 'rate', b.vitals.hr || 0);
  e.querySelector('.chest').setAttribute('breathe', 'rate', b.vitals.rr || 0);
  e.querySelector('.beacon').setAttribute('visible', b.alerts.length > 0);
  e.dataset.alerts = b.alerts.length;
  // the sickest beds stand out from the entrance: a halo on the floor, and their rank
  e.querySelector('.halo').setAttribute('visible', !!b.highlight);
  e.dataset.rank = b.rank;
  e.dataset.highlight = b.highlight ? '1' : '';
}

async function poll() {
  try {
    const withTrends = polls++ % TREND_EVERY === 0;
    const r = await fetch('/vr/state.json' + (withTrends ? '?trends=1' : ''),
                          {credentials: 'same-origin'});
    if (r.status === 401) { location.href = '/login?next=/vr'; return; }
    const doc = await r.json();
    const seen = new Set();
    for (const b of doc.beds) {
      if (b.trend) { trends.set(b.patient_id, b.trend); }
      update(b); seen.add(b.patient_id);
    }
    soundAlarms(doc.beds);
    lastBeds = doc.beds;
    for (const [pid, e] of entities) {
      if (!seen.has(pid)) { e.remove(); entities.delete(pid); }
    }
    document.getElementById('count').textContent = doc.beds.length + ' patients';
    // the layout for presence.js: bed positions and each ward's frame
    const firstState = !window.vrWard;
    window.vrWard = {beds: doc.beds, wards: doc.wards || {}};
    if (firstState) { document.dispatchEvent(new CustomEvent('ward-state')); }
    document.body.dataset.updated = doc.ts;
  } catch (err) {
    document.getElementById('count').textContent = 'connection lost, retrying';
  }
}
poll();
setInterval(poll, 1000);

// Acknowledge or escalate from inside the scene: the top open alert of the bed pointed at or
// looked at (presence.js), by the HUD buttons, the keys K and E, or by clicking the bed's alert
// beacon (the controller's trigger, or the mouse). The server checks role, ward and that the
// alert is open, and audits it, as the patient page does.
async function alertAction(verb, pid) {
  pid = pid || (window.vrTarget ? window.vrTarget() : null);
  const b = lastBeds.find(x => x.patient_id === pid);
  const say = t => { const m = document.getElementById('presence-msg');
                     m.textContent = t; document.body.dataset.alertMsg = t; };
  if (!b) { say('Point at or look at a bed first.'); return; }
  const a = b.alerts.find(x => verb === 'escalate' || x.state !== 'acknowledged');
  if (!a) { say('No open alert to ' + verb + ' for ' + pid + '.'); return; }
  const r = await fetch('/vr/alerts/' + encodeURIComponent(a.alert_id) + '/' + verb, {
    method: 'POST', credentials: 'same-origin', headers: {'Content-Type': 'application/json'},
    body: '{}'});
  say(r.status === 202 ? (verb === 'escalate' ? 'Escalation' : 'Acknowledgement') + ' of '
      + a.alert_id + ' sent.' : 'Refused (' + r.status + '): ' + verb + ' ' + a.alert_id);
}
window.vrAlertAction = alertAction;
document.getElementById('ack').addEventListener('click', () => alertAction('acknowledge'));
document.getElementById('escalate').addEventListener('click', () => alertAction('escalate'));
document.addEventListener('keydown', ev => {
  if (/INPUT|TEXTAREA|SELECT/.test(ev.target.tagName)) { return; }
  if (ev.key === 'k' || ev.key === 'K') { alertAction('acknowledge'); }
  if (ev.key === 'e' || ev.key === 'E') { alertAction('escalate'); }
});
beds.addEventListener('click', ev => {
  if (ev.target.classList && ev.target.classList.contains('beacon')) {
    const p = ev.target.closest('.patient');
    if (p) { alertAction('acknowledge', p.dataset.patientId); }
  }
});
