// The VR ward page's own code: a file, not inline, so the page's Content-Security-Policy
// needs no hash or 'unsafe-inline' for it (dashboard/headers.py).
const beds = document.getElementById('beds');
const entities = new Map();
let soundOn = false, audio = null;
const highSeen = new Set();

document.getElementById('sound').addEventListener('click', () => {
  soundOn = !soundOn;
  document.getElementById('sound').textContent = soundOn ? 'Sound off' : 'Sound on';
  if (soundOn && !audio) { audio = new AudioContext(); }
});

function tone() {
  if (!soundOn || !audio) { return; }
  const o = audio.createOscillator(), g = audio.createGain();
  o.frequency.value = 660; g.gain.value = 0.05;
  o.connect(g); g.connect(audio.destination); o.start(); o.stop(audio.currentTime + 0.25);
}

function fmt(v, digits) { return v === null || v === undefined ? '--' : v.toFixed(digits); }

function panelText(b) {
  const v = b.vitals;
  const lines = [
    b.patient_id + '  ' + (b.ward || '-') + '/' + (b.bed || '-'),
    // the band in words and shape, not the panel's colour alone
    'NEWS2 ' + (b.news2 === null ? 'no data' : b.news2) + '  ' + b.band_label
      + (b.stale && b.news2 !== null ? '  STALE' : ''),
    'HR ' + fmt(v.hr, 0) + '/min  RR ' + fmt(v.rr, 0) + '/min',
    'SpO2 ' + fmt(v.spo2, 0) + '%  SBP ' + fmt(v.sbp, 0) + ' mmHg',
    'Temp ' + fmt(v.temp, 1) + ' Cel',
  ];
  if (b.alerts.length) {
    lines.push('ALERT ' + b.alerts.map(a => a.priority + ' ' + a.kind).join(', '));
  }
  return lines;
}

// Panels are drawn on a canvas texture: A-Frame's text component loads its font from a CDN, and
// the dashboard must work on an offline hospital network.
function drawPanel(e, b, lines) {
  const cv = e._canvas, g = cv.getContext('2d');
  g.fillStyle = b.colour; g.fillRect(0, 0, cv.width, cv.height);
  g.fillStyle = '#111';
  lines.forEach((l, i) => {
    g.font = (i < 2 ? 'bold ' : '') + '36px sans-serif';
    g.fillText(l, 18, 50 + i * 52);
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
  cv.id = 'panel-' + b.patient_id; cv.width = 512; cv.height = 320; cv.style.display = 'none';
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
  const panel = add(e, 'a-plane', {class: 'panel', width: 1.6, height: 1.0,
                                   position: '0 1.75 0'});
  panel.setAttribute('material', {src: cv, shader: 'flat'});  // the element, not a selector
  add(e, 'a-sphere', {class: 'beacon', radius: 0.12, color: '#ff1a1a', position: '0 2.45 0',
                      visible: 'false', animation: 'property: scale; from: 0.6 0.6 0.6; '
                        + 'to: 1.2 1.2 1.2; dir: alternate; loop: true; dur: 500'});
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
  for (const a of b.alerts) {
    if (a.priority === 'high' && !highSeen.has(a.alert_id)) { highSeen.add(a.alert_id); tone(); }
  }
}

async function poll() {
  try {
    const r = await fetch('/vr/state.json', {credentials: 'same-origin'});
    if (r.status === 401) { location.href = '/login?next=/vr'; return; }
    const doc = await r.json();
    const seen = new Set();
    for (const b of doc.beds) { update(b); seen.add(b.patient_id); }
    for (const [pid, e] of entities) {
      if (!seen.has(pid)) { e.remove(); entities.delete(pid); }
    }
    document.getElementById('count').textContent = doc.beds.length + ' patients';
    document.body.dataset.updated = doc.ts;
  } catch (err) {
    document.getElementById('count').textContent = 'connection lost, retrying';
  }
}
poll();
setInterval(poll, 1000);
