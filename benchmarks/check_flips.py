import copy, time, torch
import usspectrum
from usspectrum.allocator import keep_freed_memory
from usspectrum.checkpoint import load_checkpoint
from usspectrum.calibration import calibrate, Calibrator
from usspectrum.dense import to_dense
from usspectrum.data import open_split, eval_transform, make_loader, seeded_subset
from usspectrum.width import parse_width_list
keep_freed_memory()
data = '/work/shared/data/cifar10'
md = load_checkpoint('examples/results/us-full.pt').eval()
ms = load_checkpoint('examples/results/us-full.pt').eval()
spec = md.meta['image']
widths = parse_width_list("0.25:1.0:0.025")
tr = eval_transform(spec)
calib = seeded_subset(open_split(data, 'train', tr), 2000, 0, 'c')
val = seeded_subset(open_split(data, 'val', tr), 10000, 0, 'v')
calibrate(md, make_loader(calib, 200), widths, dense=True)
calibrate(ms, make_loader(calib, 200), widths, dense=False)
nets = {str(w): to_dense(md, w, fuse_activations=True) for w in widths}
flips = []
maxdiff = 0.0
with torch.no_grad():
    for b, (x, y) in enumerate(make_loader(val, 200)):
        for w in widths:
            ld = nets[str(w)](x)
            ms.set_width(w); ls = ms(x)
            maxdiff = max(maxdiff, (ld - ls).abs().max().item())
            pd, ps = ld.argmax(1), ls.argmax(1)
            for i in (pd != ps).nonzero().flatten().tolist():
                top2 = ls[i].topk(2).values
                flips.append((str(w), b * 200 + i, y[i].item(), pd[i].item(), ps[i].item(), (top2[0]-top2[1]).item(), (ld[i]-ls[i]).abs().max().item()))
                torch.save(x[i], f'/tmp/flip_{w}_{b*200+i}.pt')
print('max |logit diff|', maxdiff)
for f in flips: print('flip width %s image %d label %d dense %d sliced %d sliced-gap %.3g logit-diff %.3g' % f)
# float64 reference for flipped images, sliced model with float64 calibration of the same images
if flips:
    m64 = load_checkpoint('examples/results/us-full.pt').eval().double()
    fw = sorted({f[0] for f in flips})
    with Calibrator(m64, fw) as cal:
        for x, _ in make_loader(calib, 200):
            cal.update(x.double())
    for f in flips:
        x = torch.load(f'/tmp/flip_{f[0]}_{f[1]}.pt').double()[None]
        m64.set_width(float(f[0])); l = m64(x)[0]
        print('float64 width', f[0], 'image', f[1], 'argmax', l.argmax().item(), 'gap', (l.topk(2).values[0]-l.topk(2).values[1]).item())
