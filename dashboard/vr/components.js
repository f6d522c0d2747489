// The VR ward page's own code: a file, not inline, so the page's Content-Security-Policy
// needs no hash or 'unsafe-inline' for it (dashboard/headers.py).
// The heart beats at the twin's heart rate: a short swell once per beat.
AFRAME.registerComponent('beat', {
  schema: {rate: {default: 0}},
  tick: function (t) {
    const r = this.data.rate;
    const phase = r > 0 ? ((t / 1000) * r / 60) % 1 : 0.5;
    const s = 1 + 0.25 * Math.exp(-Math.pow((phase - 0.1) / 0.07, 2));
    this.el.object3D.scale.set(s, s, s);
  }
});
// The chest breathes at the twin's respiration rate.
AFRAME.registerComponent('breathe', {
  schema: {rate: {default: 0}},
  tick: function (t) {
    const r = this.data.rate;
    const s = r > 0 ? 1 + 0.12 * Math.sin(2 * Math.PI * (t / 1000) * r / 60) : 1;
    this.el.object3D.scale.set(1, s, 1);
  }
});
