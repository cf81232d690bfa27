// SPDX-License-Identifier: GPL-2.0
/*
 * vfmig_dirty: makes pages a passthrough device may have written by DMA visible to the
 * hypervisor's dirty logging, so live migration's pre-copy re-sends them.
 *
 * A device's DMA writes bypass the CPU, so the hypervisor never sees those pages change.
 * Every such write is handed back to the CPU through the generic DMA API before anyone reads
 * it: an unmap or a sync-for-cpu of a streaming mapping, or the free of a coherent one. This
 * module puts kprobes on those entry points (the generic API, not a driver, so it covers every
 * driver; drivers that recycle RX pages only sync, which is why the sync calls are hooked too)
 * and, for the devices it is told to track, writes each page of the range once with the CPU.
 * The write is an atomic add of zero to an aligned word: it marks the page dirty and cannot
 * lose a concurrent writer's store.
 *
 * Control, under /sys/kernel/vfmig_dirty/:
 *   enabled  0 or 1; 0 unregisters the probes, so a disabled hook costs nothing
 *   track    write a PCI address (0000:01:00.0) to start tracking that device
 *   untrack  write a PCI address to stop tracking it
 *   devices  one line per tracked device: "<address> calls=<n> pages=<n>"
 *
 * It must never write a page it cannot prove is ordinary RAM, and never sleep in a probe.
 */

#include <linux/atomic.h>
#include <linux/dma-direct.h>
#include <linux/dma-mapping.h>
#include <linux/highmem.h>
#include <linux/iommu.h>
#include <linux/kobject.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/rculist.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/sysfs.h>

/* Tracking is per VF; a guest with more passthrough NICs than this has other problems. */
#define MAX_TRACKED 16

struct tracked {
	struct list_head node;
	struct pci_dev *pdev; /* holds a reference, so the pointer cannot be reused */
	atomic64_t calls;
	atomic64_t pages;
	struct rcu_head rcu;
};

static LIST_HEAD(tracked_list);
static unsigned int tracked_count;
static DEFINE_MUTEX(control_lock); /* serialises enable/disable and list changes */
static bool enabled;

static struct tracked *find_tracked(struct device *dev)
{
	struct tracked *t;

	list_for_each_entry_rcu(t, &tracked_list, node)
		if (&t->pdev->dev == dev)
			return t;
	return NULL;
}

static bool device_writes(unsigned long dir)
{
	return dir == DMA_FROM_DEVICE || dir == DMA_BIDIRECTIONAL;
}

/* One locked no-op write per page; reserved pages (firmware, swiotlb bounce buffers) are left
 * alone: they are not the driver's buffers, and swiotlb copies into those with the CPU anyway. */
static void touch_pfn(struct tracked *t, unsigned long pfn)
{
	struct page *page;
	void *va;

	if (!pfn_valid(pfn))
		return;
	page = pfn_to_page(pfn);
	if (PageReserved(page))
		return;
	va = kmap_local_page(page);
	atomic_long_add(0, (atomic_long_t *)va);
	kunmap_local(va);
	atomic64_inc(&t->pages);
}

static void touch_phys(struct tracked *t, phys_addr_t phys, size_t size)
{
	unsigned long pfn, last;

	if (!size)
		return;
	last = PHYS_PFN(phys + size - 1);
	for (pfn = PHYS_PFN(phys); pfn <= last; pfn++)
		touch_pfn(t, pfn);
}

/* A device address to the page behind it. The probe runs before the unmap, so an IOMMU
 * mapping still exists; pages of one IOVA range need not be contiguous, hence per page. */
static void touch_dma_range(struct tracked *t, struct device *dev, dma_addr_t addr, size_t size)
{
	struct iommu_domain *domain = iommu_get_domain_for_dev(dev);
	dma_addr_t page_addr, end;
	phys_addr_t phys;

	if (!size)
		return;
	end = addr + size;
	for (page_addr = addr & PAGE_MASK; page_addr < end; page_addr += PAGE_SIZE) {
		phys = domain ? iommu_iova_to_phys(domain, page_addr) : dma_to_phys(dev, page_addr);
		if (phys && phys != (phys_addr_t)-1)
			touch_pfn(t, PHYS_PFN(phys));
	}
}

/* nents is the count passed to dma_map_sg (the API requires it at unmap), so the CPU side of
 * every entry is intact and no IOVA translation is needed. */
static void touch_sg(struct tracked *t, struct scatterlist *sgl, int nents)
{
	struct scatterlist *sg;
	int i;

	for_each_sg(sgl, sg, nents, i)
		touch_phys(t, sg_phys(sg), sg->length);
}

static struct tracked *seen(struct pt_regs *regs)
{
	struct tracked *t = find_tracked((struct device *)regs_get_kernel_argument(regs, 0));

	if (t)
		atomic64_inc(&t->calls);
	return t;
}

/* dma_unmap_page_attrs(dev, addr, size, dir, attrs) and
 * dma_sync_single_for_cpu(dev, addr, size, dir) share their first four arguments. */
static int on_single(struct kprobe *p, struct pt_regs *regs)
{
	struct tracked *t;

	rcu_read_lock();
	t = seen(regs);
	if (t && device_writes(regs_get_kernel_argument(regs, 3)))
		touch_dma_range(t, (struct device *)regs_get_kernel_argument(regs, 0),
				regs_get_kernel_argument(regs, 1), regs_get_kernel_argument(regs, 2));
	rcu_read_unlock();
	return 0;
}

/* dma_unmap_sg_attrs(dev, sg, nents, dir, attrs) and dma_sync_sg_for_cpu(dev, sg, nelems, dir). */
static int on_sg(struct kprobe *p, struct pt_regs *regs)
{
	struct tracked *t;

	rcu_read_lock();
	t = seen(regs);
	if (t && device_writes(regs_get_kernel_argument(regs, 3)))
		touch_sg(t, (struct scatterlist *)regs_get_kernel_argument(regs, 1),
			 (int)regs_get_kernel_argument(regs, 2));
	rcu_read_unlock();
	return 0;
}

/* dma_free_attrs(dev, size, cpu_addr, dma_handle, attrs): coherent memory has no direction.
 * The device address is used, not cpu_addr, which is only a cookie under
 * DMA_ATTR_NO_KERNEL_MAPPING. */
static int on_free(struct kprobe *p, struct pt_regs *regs)
{
	struct tracked *t;

	rcu_read_lock();
	t = seen(regs);
	if (t)
		touch_dma_range(t, (struct device *)regs_get_kernel_argument(regs, 0),
				regs_get_kernel_argument(regs, 3), regs_get_kernel_argument(regs, 1));
	rcu_read_unlock();
	return 0;
}

static const struct {
	const char *symbol;
	kprobe_pre_handler_t handler;
} hooks[] = {
	{ "dma_unmap_page_attrs", on_single },
	{ "dma_sync_single_for_cpu", on_single },
	{ "dma_unmap_sg_attrs", on_sg },
	{ "dma_sync_sg_for_cpu", on_sg },
	{ "dma_free_attrs", on_free },
};

static struct kprobe probes[ARRAY_SIZE(hooks)];
static struct kprobe *probe_ptrs[ARRAY_SIZE(hooks)];

/* A kprobe keeps its resolved address after unregistering and refuses to register again
 * with both a symbol and an address, so every enable starts from fresh structs. */
static int hook_enable(void)
{
	size_t i;

	memset(probes, 0, sizeof(probes));
	for (i = 0; i < ARRAY_SIZE(hooks); i++) {
		probes[i].symbol_name = hooks[i].symbol;
		probes[i].pre_handler = hooks[i].handler;
		probe_ptrs[i] = &probes[i];
	}
	return register_kprobes(probe_ptrs, ARRAY_SIZE(probes));
}

/* Returns after every running handler has finished. */
static void hook_disable(void)
{
	unregister_kprobes(probe_ptrs, ARRAY_SIZE(probes));
}

struct pci_addr {
	unsigned int domain, bus, devfn;
};

static int parse_pci(const char *buf, struct pci_addr *a)
{
	unsigned int slot, fn;
	char tail;
	int n = sscanf(buf, "%x:%x:%x.%x%c", &a->domain, &a->bus, &slot, &fn, &tail);

	if (n < 4 || (n == 5 && tail != '\n') || a->domain > 0xffff || a->bus > 0xff ||
	    slot > 0x1f || fn > 7)
		return -EINVAL;
	a->devfn = PCI_DEVFN(slot, fn);
	return 0;
}

/* By address, not by lookup: a device that was hot-unplugged stays listed (the list holds
 * a reference) until it is untracked, and must be found although the bus no longer has it. */
static struct tracked *find_tracked_addr(const struct pci_addr *a)
{
	struct tracked *t;

	list_for_each_entry(t, &tracked_list, node)
		if (pci_domain_nr(t->pdev->bus) == a->domain && t->pdev->bus->number == a->bus &&
		    t->pdev->devfn == a->devfn)
			return t;
	return NULL;
}

static ssize_t enabled_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(enabled));
}

static ssize_t enabled_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			     size_t count)
{
	bool want;
	int err = kstrtobool(buf, &want);

	if (err)
		return err;
	mutex_lock(&control_lock);
	if (want && !enabled) {
		err = hook_enable();
		if (!err)
			WRITE_ONCE(enabled, true);
	} else if (!want && enabled) {
		hook_disable();
		WRITE_ONCE(enabled, false);
	}
	mutex_unlock(&control_lock);
	return err ? err : count;
}

static ssize_t track_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			   size_t count)
{
	struct pci_dev *pdev = NULL;
	struct pci_addr a;
	struct tracked *t;
	int err = parse_pci(buf, &a);

	if (err)
		return err;
	mutex_lock(&control_lock);
	if (find_tracked_addr(&a)) {
		err = -EEXIST;
	} else if (tracked_count >= MAX_TRACKED) {
		err = -ENOSPC;
	} else {
		pdev = pci_get_domain_bus_and_slot(a.domain, a.bus, a.devfn);
		t = pdev ? kzalloc(sizeof(*t), GFP_KERNEL) : NULL;
		if (!pdev) {
			err = -ENODEV;
		} else if (!t) {
			err = -ENOMEM;
		} else {
			t->pdev = pdev;
			list_add_rcu(&t->node, &tracked_list);
			tracked_count++;
			pdev = NULL; /* the list owns the reference now */
		}
	}
	mutex_unlock(&control_lock);
	pci_dev_put(pdev);
	return err ? err : count;
}

static void release_tracked(struct rcu_head *rcu)
{
	struct tracked *t = container_of(rcu, struct tracked, rcu);

	pci_dev_put(t->pdev);
	kfree(t);
}

static ssize_t untrack_store(struct kobject *kobj, struct kobj_attribute *attr, const char *buf,
			     size_t count)
{
	struct pci_addr a;
	struct tracked *t;
	int err = parse_pci(buf, &a);

	if (err)
		return err;
	mutex_lock(&control_lock);
	t = find_tracked_addr(&a);
	if (t) {
		list_del_rcu(&t->node);
		tracked_count--;
		call_rcu(&t->rcu, release_tracked);
	} else {
		err = -ENOENT;
	}
	mutex_unlock(&control_lock);
	return err ? err : count;
}

static ssize_t devices_show(struct kobject *kobj, struct kobj_attribute *attr, char *buf)
{
	struct tracked *t;
	int len = 0;

	rcu_read_lock();
	list_for_each_entry_rcu(t, &tracked_list, node)
		len += sysfs_emit_at(buf, len, "%s calls=%lld pages=%lld\n", pci_name(t->pdev),
				     (long long)atomic64_read(&t->calls),
				     (long long)atomic64_read(&t->pages));
	rcu_read_unlock();
	return len;
}

static struct kobj_attribute enabled_attr = __ATTR_RW(enabled);
static struct kobj_attribute track_attr = __ATTR_WO(track);
static struct kobj_attribute untrack_attr = __ATTR_WO(untrack);
static struct kobj_attribute devices_attr = __ATTR_RO(devices);

static struct attribute *control_attrs[] = {
	&enabled_attr.attr,
	&track_attr.attr,
	&untrack_attr.attr,
	&devices_attr.attr,
	NULL,
};

static const struct attribute_group control_group = { .attrs = control_attrs };
static struct kobject *control_kobj;

static int __init vfmig_dirty_init(void)
{
	int err;

	control_kobj = kobject_create_and_add("vfmig_dirty", kernel_kobj);
	if (!control_kobj)
		return -ENOMEM;
	err = sysfs_create_group(control_kobj, &control_group);
	if (err)
		kobject_put(control_kobj);
	return err;
}

/* Safe while enabled: the control files go first, then the probes (waiting out running
 * handlers), then the list. */
static void __exit vfmig_dirty_exit(void)
{
	struct tracked *t, *next;

	kobject_put(control_kobj);
	if (enabled)
		hook_disable();
	list_for_each_entry_safe(t, next, &tracked_list, node) {
		list_del(&t->node);
		pci_dev_put(t->pdev);
		kfree(t);
	}
	rcu_barrier(); /* untrack's release callbacks live in this module's text */
}

module_init(vfmig_dirty_init);
module_exit(vfmig_dirty_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vfmig: dirty pages handed back from device DMA so pre-copy re-sends them");
MODULE_VERSION("0.1.0");
