// Presence in the VR ward (dashboard/presence.py): this page's pose goes to the server, the
// colleagues of the same ward come back as avatars. A file, not inline, for the page's CSP.
// Built element by element (names and ids are data, never markup).
(function () {
  const SEND_MS = 150;        // a move is sent within 0.15 s (the server allows 10 a second)
  const MIN_GAP_MS = 120;     // late timers fire in bursts: never two sends closer than this
  const HEARTBEAT_MS = 3000;  // a still user is sent anyway: the server forgets after 10 s
  const DWELL_MS = 800;       // the gaze must rest this long on a bed to count as looking
  const GAZE_DEG = 12, GAZE_M = 15;
  const ROLE_COLOURS = {clinician: '#2a6fdb', admin: '#6a3fb5', viewer: '#3d8a4a'};

  const rig = document.getElementById('rig');
  const camEl = rig.querySelector('[camera]');
  const layer = document.getElementById('people');
  const list = document.getElementById('presence-list');
  const msg = document.getElementById('presence-msg');
  const callBtn = document.getElementById('call');
  const avatars = new Map();  // presence id -> entity
  const markers = new Map();  // ward -> entity
  const seenCalls = new Set();
  let first = true, me = null, last = null, lastSent = 0, backoffUntil = 0;
  let gazeCandidate = null, gazeSince = 0, looking = null, pointing = null;
  let picture = {people: [], calls: []};

  function bedsById() {
    const out = new Map();
    for (const b of (window.vrWard && window.vrWard.beds) || []) { out.set(b.patient_id, b); }
    return out;
  }
  function origins() { return (window.vrWard && window.vrWard.wards) || {}; }

  // The ward whose beds are nearest (a ward's beds span 4 m from its origin).
  function wardAt(x) {
    let best = null, dist = Infinity;
    for (const [w, o] of Object.entries(origins())) {
      const d = Math.abs(x - (o.x + 2));
      if (d < dist) { dist = d; best = w; }
    }
    return best;
  }

  function add(parent, tag, attrs) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) { el.setAttribute(k, String(v)); }
    parent.appendChild(el);
    return el;
  }

  // The bed the gaze rests on: the nearest one within its own apparent size (about a metre
  // around its centre, at most GAZE_DEG), as a ray would hit it, not a farther one behind it.
  function gaze(pos, dir) {
    let best = null, bestD = Infinity;
    for (const b of bedsById().values()) {
      const v = new THREE.Vector3(b.x - pos.x, 0.8 - pos.y, b.z - pos.z);
      const d = v.length();
      if (d > GAZE_M || d < 0.01 || d >= bestD) { continue; }
      const deg = THREE.MathUtils.radToDeg(v.angleTo(dir));
      const size = Math.min(GAZE_DEG, THREE.MathUtils.radToDeg(Math.atan(1.0 / d)));
      if (deg < size) { bestD = d; best = b.patient_id; }
    }
    return best;
  }

  function pose() {
    const o = camEl.object3D;
    rig.object3D.updateMatrixWorld(true);  // the render loop may not have run since a move
    const pos = o.getWorldPosition(new THREE.Vector3());
    const q = o.getWorldQuaternion(new THREE.Quaternion());
    const e = new THREE.Euler().setFromQuaternion(q, 'YXZ');  // look-controls' order
    const dir = new THREE.Vector3(0, 0, -1).applyQuaternion(q);
    const now = performance.now();
    const g = gaze(pos, dir);
    if (g !== gazeCandidate) { gazeCandidate = g; gazeSince = now; }
    if (g !== null && now - gazeSince >= DWELL_MS) { looking = g; }
    if (g === null) { looking = null; }
    const ward = wardAt(pos.x);
    if (ward === null) { return null; }
    const org = origins()[ward];
    const clamp = v => Math.max(-999, Math.min(999, v));
    const beds = bedsById();
    const inWard = pid => (pid && beds.has(pid) && beds.get(pid).ward === ward ? pid : null);
    return {ward: ward, x: clamp(pos.x - org.x), y: Math.max(-0.9, Math.min(4.9, pos.y)),
            z: clamp(pos.z - org.z), yaw: e.y, pitch: e.x,
            looking: inWard(looking), pointing: inWard(pointing)};
  }

  function changed(a, b) {
    if (!a || !b) { return true; }
    return a.ward !== b.ward || a.looking !== b.looking || a.pointing !== b.pointing
      || Math.hypot(a.x - b.x, a.y - b.y, a.z - b.z) > 0.02
      || Math.abs(a.yaw - b.yaw) > 0.02 || Math.abs(a.pitch - b.pitch) > 0.02;
  }

  async function send() {
    const now = performance.now();
    if (now < backoffUntil || now - lastSent < MIN_GAP_MS) { return; }
    const p = pose();
    if (!p || (!changed(p, last) && now - lastSent < HEARTBEAT_MS)) { return; }
    last = p; lastSent = now;
    try {
      const r = await fetch('/presence/pose', {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify(p)});
      if (r.status === 401) { location.href = '/login?next=/vr'; }
      if (r.status === 429) { backoffUntil = now + 1000; }
      document.body.dataset.poseStatus = r.status;
    } catch (err) { last = null; }
  }

  // The pointer ray: the controller's laser in a headset, the mouse on a desktop (the
  // scene's cursor); both make A-Frame emit mouseenter/mouseleave on the bed they are on.
  const beds = document.getElementById('beds');
  beds.addEventListener('mouseenter', ev => {
    const p = ev.target.closest && ev.target.closest('.patient');
    if (p) { pointing = p.dataset.patientId; }
  });
  beds.addEventListener('mouseleave', ev => {
    const p = ev.target.closest && ev.target.closest('.patient');
    if (p && pointing === p.dataset.patientId) { pointing = null; }
  });

  function tag(e, lines, colour) {
    const cv = e._canvas, g = cv.getContext('2d');
    g.clearRect(0, 0, cv.width, cv.height);
    g.fillStyle = '#ffffffe0'; g.fillRect(0, 0, cv.width, cv.height);
    g.fillStyle = colour; g.fillRect(0, 0, 12, cv.height);
    g.fillStyle = '#111';
    lines.forEach((l, i) => { g.font = (i === 0 ? 'bold ' : '') + '30px sans-serif';
                              g.fillText(l, 24, 40 + i * 40); });
    const mesh = e.querySelector('.name-tag').getObject3D('mesh');
    if (mesh && mesh.material && mesh.material.map) { mesh.material.map.needsUpdate = true; }
  }

  function avatar(p) {
    const colour = ROLE_COLOURS[p.role] || '#555';
    const e = document.createElement('a-entity');
    e.setAttribute('class', 'avatar');
    e.id = 'avatar-' + p.id;
    e.dataset.user = p.user;
    e.dataset.role = p.role;
    const cv = document.createElement('canvas');
    cv.width = 512; cv.height = 96; cv.style.display = 'none';
    document.body.appendChild(cv);
    e._canvas = cv;
    add(e, 'a-cylinder', {class: 'torso', radius: 0.2, height: 1.1, color: colour,
                          position: '0 0.75 0'});
    const head = add(e, 'a-entity', {class: 'head'});
    add(head, 'a-sphere', {radius: 0.14, color: '#f1d3b3'});
    // the visor shows where the head faces (A-Frame's forward is -z)
    add(head, 'a-box', {width: 0.22, height: 0.07, depth: 0.06, color: '#222',
                        position: '0 0.02 -0.13'});
    const t = add(e, 'a-plane', {class: 'name-tag', width: 1.0, height: 0.19,
                                 material: 'shader: flat; side: double; transparent: true'});
    t.setAttribute('material', 'src', cv);
    add(e, 'a-entity', {class: 'ray', visible: false});
    layer.appendChild(e);
    return e;
  }

  function place(e, p, org, beds) {
    const x = org.x + p.x, z = org.z + p.z;
    e.setAttribute('position', x + ' 0 ' + z);
    e.object3D.position.set(x, 0, z);  // at once, not at the next render
    const head = e.querySelector('.head');
    head.setAttribute('position', '0 ' + p.y + ' 0');
    head.setAttribute('rotation', THREE.MathUtils.radToDeg(p.pitch) + ' '
                      + THREE.MathUtils.radToDeg(p.yaw) + ' 0');
    e.querySelector('.name-tag').setAttribute('position', '0 ' + (p.y + 0.38) + ' 0');
    const target = p.pointing && beds.get(p.pointing);
    const ray = e.querySelector('.ray');
    if (target) {
      ray.setAttribute('line', {start: {x: 0.25, y: p.y - 0.45, z: 0},
                                end: {x: target.x - x, y: 0.6, z: target.z - z},
                                color: ROLE_COLOURS[p.role] || '#555'});
    }
    ray.setAttribute('visible', !!target);
    e.dataset.x = x.toFixed(2); e.dataset.z = z.toFixed(2);
    e.dataset.looking = p.looking || ''; e.dataset.pointing = p.pointing || '';
    const lines = [p.user + ' · ' + p.role];
    if (p.looking) { lines.push('looking at ' + p.looking); }
    if (p.pointing && p.pointing !== p.looking) { lines.push('pointing at ' + p.pointing); }
    tag(e, lines.slice(0, 2), ROLE_COLOURS[p.role] || '#555');
  }

  function marker(c, beds) {
    const b = beds.get(c.patient_id);
    let m = markers.get(c.ward);
    if (!m) {
      m = add(document.getElementById('markers'), 'a-entity', {class: 'call-marker'});
      add(m, 'a-ring', {'radius-inner': 1.1, 'radius-outer': 1.35, color: '#ff8c00',
                        rotation: '-90 0 0', position: '0 0.02 0'});
      add(m, 'a-cone', {'radius-bottom': 0.18, 'radius-top': 0.01, height: 0.4, color: '#ff8c00',
                        rotation: '180 0 0', position: '0 3.0 0',
                        animation: 'property: position; from: 0 3.0 0; to: 0 2.8 0; '
                          + 'dir: alternate; loop: true; dur: 600'});
      markers.set(c.ward, m);
    }
    m.dataset.patientId = c.patient_id;
    m.dataset.by = c.by;
    m.setAttribute('visible', !!b);
    if (b) { m.setAttribute('position', b.x + ' 0 ' + b.z); }
  }

  // A short two-tone chime: only after "Sound on" (browsers allow audio after a gesture).
  function chime() {
    if (typeof soundOn === 'undefined' || !soundOn || !audio) { return; }
    [880, 660].forEach((f, i) => {
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = f; g.gain.value = 0.06;
      o.connect(g); g.connect(audio.destination);
      const t0 = audio.currentTime + i * 0.18;
      o.start(t0); o.stop(t0 + 0.15);
    });
  }

  function say(text) {
    msg.textContent = text;
    document.body.dataset.presenceMsg = text;
  }

  function render(doc) {
    picture = doc;
    const beds = bedsById(), orgs = origins();
    const mine = doc.people.find(p => p.me);
    me = mine ? mine.user : me;
    const shown = new Set();
    for (const p of doc.people) {
      if (p.me || p.device !== 'vr' || !orgs[p.ward]) { continue; }
      let e = avatars.get(p.id);
      if (!e) { e = avatar(p); avatars.set(p.id, e); }
      place(e, p, orgs[p.ward], beds);
      shown.add(p.id);
    }
    for (const [id, e] of avatars) {
      if (!shown.has(id)) { e._canvas.remove(); e.remove(); avatars.delete(id); }
    }
    // who is here, in words (the HUD): also for screen readers and desktop users
    list.replaceChildren();
    for (const p of doc.people) {
      const li = document.createElement('li');
      li.textContent = (p.me ? 'you' : p.user) + ' (' + p.role + ', '
        + (p.device === 'vr' ? '3D' : 'ward page') + ', ward ' + p.ward + ')'
        + (p.looking ? ' looking at ' + p.looking : '')
        + (p.pointing ? ' pointing at ' + p.pointing : '');
      li.dataset.user = p.user;
      list.appendChild(li);
    }
    for (const c of doc.calls) {
      marker(c, beds);
      if (!seenCalls.has(c.id)) {
        seenCalls.add(c.id);
        if (!first) {
          const b = beds.get(c.patient_id);
          const where = b ? ' (' + (b.ward || '-') + '/' + (b.bed || '-') + ')' : '';
          if (c.by !== me) {
            say(c.by + ' (' + c.role + ') calls you to ' + c.patient_id + where);
            chime();
          } else {
            say('You called your colleagues to ' + c.patient_id + where);
          }
        }
      }
    }
    const wards = new Set(doc.calls.map(c => c.ward));
    for (const [w, m] of markers) { if (!wards.has(w)) { m.setAttribute('visible', false); } }
    first = false;
    window.__presence = {doc: doc, at: performance.now()};
  }

  window.vrTarget = () => pointing || looking || gazeCandidate;  // ward.js: alert actions

  async function call() {
    const pid = pointing || looking || gazeCandidate;
    if (!pid) { say('Look or point at a bed first, then call.'); return; }
    const r = await fetch('/presence/call', {method: 'POST', credentials: 'same-origin',
      headers: {'Content-Type': 'application/json'}, body: JSON.stringify({patient_id: pid})});
    if (r.status === 429) { say('Too many calls: wait a moment.'); }
    else if (r.status !== 202) { say('The call was refused (' + r.status + ').'); }
  }
  callBtn.addEventListener('click', call);
  document.addEventListener('keydown', ev => {
    // "c" calls (WASD moves); not while typing in a field
    if ((ev.key === 'c' || ev.key === 'C') && !/INPUT|TEXTAREA|SELECT/.test(ev.target.tagName)) {
      call();
    }
  });

  let es = null, pollTimer = null;
  async function pollOnce() {
    try {
      const r = await fetch('/presence.json', {credentials: 'same-origin'});
      if (r.ok) { render(await r.json()); }
    } catch (err) { /* the next poll tries again */ }
  }
  function connect() {
    if (typeof EventSource === 'undefined') { pollTimer = setInterval(pollOnce, 500); return; }
    es = new EventSource('/presence/stream');
    es.addEventListener('presence', ev => render(JSON.parse(ev.data)));
    es.addEventListener('open', () => {
      if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
    });
    es.addEventListener('error', () => {
      // refused (503: no thread free) or lost: poll until the browser's retry gets through
      if (!pollTimer) { pollTimer = setInterval(pollOnce, 500); }
      if (es.readyState === EventSource.CLOSED) { setTimeout(connect, 5000); }
    });
    window.__presenceStream = es;
  }

  function start() {
    connect();
    setInterval(send, SEND_MS);
  }
  // the ward's layout (bed positions, ward origins) comes with the first state poll
  if (window.vrWard) { start(); }
  else { document.addEventListener('ward-state', start, {once: true}); }
  window.addEventListener('pagehide', () => {
    fetch('/presence/leave', {method: 'POST', credentials: 'same-origin', keepalive: true,
      headers: {'Content-Type': 'application/json'}, body: '{}'});
  });
})();
