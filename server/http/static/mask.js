// The edit region: painted with a brush on a canvas at the image's own size, shown as a
// translucent overlay, exported in OpenAI's mask convention (alpha 0 = edit).
//
// The region is kept as a list of operations (strokes, clear, invert, a loaded mask) and redrawn
// from it: undo/redo then cost no full-resolution snapshots, which matters for large photos.
// The canvas holds the region as alpha: painted (edit) pixels opaque, kept pixels transparent.

const INK = "rgb(255, 45, 95)";

export class MaskEditor {
  /** canvas: the <canvas> laid over the image (CSS sizes it; its pixels are the image's). */
  constructor(canvas, { onChange = () => {} } = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: false });
    this.onChange = onChange;
    this.ops = [];
    this.undone = [];
    this.mode = "paint"; // or "erase"
    this.brush = 40; // diameter in CSS pixels, as the user sees it
    this.stroke = null;
    this.#listen();
  }

  /** Start over with an empty region of width x height pixels (a new image). */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.ops = [];
    this.undone = [];
    this.#redraw();
  }

  get width() {
    return this.canvas.width;
  }

  get height() {
    return this.canvas.height;
  }

  canUndo() {
    return this.ops.length > 0;
  }

  canRedo() {
    return this.undone.length > 0;
  }

  undo() {
    if (this.ops.length) this.undone.push(this.ops.pop());
    this.#redraw();
  }

  redo() {
    if (this.undone.length) this.ops.push(this.undone.pop());
    this.#redraw();
  }

  clear() {
    this.#push({ type: "clear" });
  }

  invert() {
    this.#push({ type: "invert" });
  }

  /** Replace the region by a mask image (an ImageBitmap of the same size), read as the server
   * reads one: alpha 0 = edit when it has transparency, else white (luminance > 127) = edit. */
  load(bitmap) {
    const c = new OffscreenCanvas(this.width, this.height);
    const g = c.getContext("2d");
    g.drawImage(bitmap, 0, 0);
    const img = g.getImageData(0, 0, c.width, c.height);
    const px = img.data;
    let transparent = false;
    for (let i = 3; i < px.length; i += 4) {
      if (px[i] < 255) {
        transparent = true;
        break;
      }
    }
    for (let i = 0; i < px.length; i += 4) {
      const lum = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
      const edit = transparent ? px[i + 3] === 0 : lum > 127;
      px[i] = 255;
      px[i + 1] = 45;
      px[i + 2] = 95;
      px[i + 3] = edit ? 255 : 0;
    }
    g.putImageData(img, 0, 0);
    this.#push({ type: "set", image: c });
  }

  /** True when no pixel is in the region (the server would answer 400: the page sends it
   * anyway, so the user sees the API's own message). */
  isEmpty() {
    const px = this.ctx.getImageData(0, 0, this.width, this.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] >= 128) return false;
    return true;
  }

  /** The mask as the API wants it: a PNG at the image's size, opaque black where the image is
   * kept and alpha 0 where it is edited. Half-covered brush edges count as edit from 50%. */
  async toBlob() {
    const c = new OffscreenCanvas(this.width, this.height);
    const g = c.getContext("2d");
    const region = this.ctx.getImageData(0, 0, this.width, this.height).data;
    const out = g.createImageData(this.width, this.height);
    const px = out.data;
    for (let i = 0; i < px.length; i += 4) px[i + 3] = region[i + 3] >= 128 ? 0 : 255;
    g.putImageData(out, 0, 0);
    return c.convertToBlob({ type: "image/png" });
  }

  // ---------------------------------------------------------------- drawing

  #push(op) {
    this.ops.push(op);
    this.undone = [];
    this.#redraw();
  }

  #redraw() {
    const g = this.ctx;
    g.globalCompositeOperation = "source-over";
    g.clearRect(0, 0, this.width, this.height);
    for (const op of this.ops) this.#apply(op);
    this.onChange();
  }

  #apply(op) {
    const g = this.ctx;
    if (op.type === "clear") {
      g.globalCompositeOperation = "source-over";
      g.clearRect(0, 0, this.width, this.height);
    } else if (op.type === "invert") {
      g.globalCompositeOperation = "xor"; // opaque <-> transparent
      g.fillStyle = INK;
      g.fillRect(0, 0, this.width, this.height);
    } else if (op.type === "set") {
      g.globalCompositeOperation = "source-over";
      g.clearRect(0, 0, this.width, this.height);
      g.drawImage(op.image, 0, 0);
    } else if (op.type === "stroke") {
      op.points.forEach((p, i) => this.#segment(op, i === 0 ? p : op.points[i - 1], p));
    }
    g.globalCompositeOperation = "source-over";
  }

  #segment(op, [x0, y0], [x1, y1]) {
    const g = this.ctx;
    g.globalCompositeOperation = op.mode === "erase" ? "destination-out" : "source-over";
    g.strokeStyle = INK;
    g.fillStyle = INK;
    if (x0 === x1 && y0 === y1) {
      g.beginPath();
      g.arc(x1, y1, op.radius, 0, 2 * Math.PI);
      g.fill();
      return;
    }
    g.lineCap = "round";
    g.lineJoin = "round";
    g.lineWidth = 2 * op.radius;
    g.beginPath();
    g.moveTo(x0, y0);
    g.lineTo(x1, y1);
    g.stroke();
  }

  /** Image pixels per CSS pixel of the canvas as displayed. */
  scale() {
    const box = this.canvas.getBoundingClientRect();
    return box.width > 0 ? this.width / box.width : 1;
  }

  #point(event) {
    const box = this.canvas.getBoundingClientRect();
    const s = this.width / box.width;
    return [(event.clientX - box.left) * s, (event.clientY - box.top) * s];
  }

  // Pointer events: mouse, pen and touch alike (touch-action: none in the CSS keeps the
  // browser from scrolling while a finger paints). One pointer paints at a time.
  #listen() {
    const c = this.canvas;
    c.addEventListener("pointerdown", (e) => {
      if (this.stroke || e.button > 0 || !this.width) return;
      e.preventDefault();
      c.setPointerCapture(e.pointerId);
      const p = this.#point(e);
      this.stroke = {
        type: "stroke",
        mode: this.mode,
        radius: Math.max(0.5, (this.brush / 2) * this.scale()),
        points: [p],
        pointer: e.pointerId,
      };
      this.undone = [];
      this.#segment(this.stroke, p, p);
      this.ctx.globalCompositeOperation = "source-over";
    });
    c.addEventListener("pointermove", (e) => {
      const s = this.stroke;
      if (!s || e.pointerId !== s.pointer) return;
      const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
      for (const ev of events.length ? events : [e]) {
        const p = this.#point(ev);
        this.#segment(s, s.points[s.points.length - 1], p);
        s.points.push(p);
      }
      this.ctx.globalCompositeOperation = "source-over";
    });
    const end = (e) => {
      const s = this.stroke;
      if (!s || e.pointerId !== s.pointer) return;
      this.stroke = null;
      delete s.pointer;
      this.ops.push(s);
      this.onChange();
    };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
  }
}
