// SPDX-License-Identifier: GPL-2.0
/*
 * vfmig_exercise: a test-only load for vfmig_dirty. It stands in for a NIC driver whose
 * device writes by DMA: it maps a known working set of pages for a tracked device
 * (DMA_FROM_DEVICE) and unmaps them again, round after round. Nothing touches those pages
 * with the CPU, so the hypervisor sees them dirtied only if vfmig_dirty is doing its job.
 * Mode "cpu" writes the same pages with the CPU instead: the reference for what "dirtied"
 * looks like to the hypervisor. Built for the test image only; never installed by packages.
 *
 * Control, under /sys/kernel/vfmig_exercise/:
 *   device       PCI address of the device to map for (mode dma)
 *   pages        working-set size in pages
 *   mode         dma or cpu
 *   running      1 allocates the working set and starts; 0 stops and frees it
 *   rounds       rounds completed since the last start
 *   ns_per_page  mean cost of one page since the start (map + unmap, or one CPU write)
 */

#include <linux/delay.h>
#include <linux/dma-mapping.h>
#include <linux/kobject.h>
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/vmalloc.h>

#define MAX_PAGES 65536

static DEFINE_MUTEX(lock); /* everything below, except the counters the thread writes */
static struct pci_dev *pdev;
static unsigned int npages = 16384;
static bool cpu_mode;
static struct page **set;
static struct task_struct *worker;
static atomic64_t rounds;
static atomic64_t busy_ns; /* time spent in rounds since the start, pauses excluded */

static void one_round(void)
{
	u64 start = ktime_get_ns();
	unsigned int i;
	dma_addr_t h;

	for (i = 0; i < npages; i++) {
		if (cpu_mode) {
			long *word = page_address(set[i]);

			WRITE_ONCE(*word, READ_ONCE(*word));
		} else {
			h = dma_map_page(&pdev->dev, set[i], 0, PAGE_SIZE, DMA_FROM_DEVICE);
			if (!dma_mapping_error(&pdev->dev, h))
				dma_unmap_page(&pdev->dev, h, PAGE_SIZE, DMA_FROM_DEVICE);
		}
		if (i % 256 == 255)
			cond_resched();
	}
	atomic64_add(ktime_get_ns() - start, &busy_ns);
	atomic64_inc(&rounds);
}

/* A pause between rounds leaves the guest's single vCPU to everything else. */
static int work(void *unused)
{
	while (!kthread_should_stop()) {
		one_round();
		msleep(20);
	}
	return 0;
}

static void free_set(void)
{
	unsigned int i;

	if (!set)
		return;
	for (i = 0; i < npages && set[i]; i++)
		__free_page(set[i]);
	vfree(set);
	set = NULL;
}

static int start(void)
{
	unsigned int i;

	if (!cpu_mode && !pdev)
		return -ENODEV;
	set = vzalloc(array_size(npages, sizeof(*set)));
	if (!set)
		return -ENOMEM;
	for (i = 0; i < npages; i++) {
		set[i] = alloc_page(GFP_KERNEL);
		if (!set[i]) {
			free_set();
			return -ENOMEM;
		}
		/* Migration sends a zero page as a few bytes; a working set of them would be
		 * re-sent in no time and pre-copy would converge between two rounds. */
		memset(page_address(set[i]), 0x5a, PAGE_SIZE);
	}
	atomic64_set(&rounds, 0);
	atomic64_set(&busy_ns, 0);
	worker = kthread_run(work, NULL, "vfmig_exercise");
	if (IS_ERR(worker)) {
		int err = PTR_ERR(worker);

		worker = NULL;
		free_set();
		return err;
	}
	return 0;
}

static void stop(void)
{
	if (!worker)
		return;
	kthread_stop(worker);
	worker = NULL;
	free_set();
}

static ssize_t device_store(struct kobject *k, struct kobj_attribute *a, const char *buf, size_t n)
{
	unsigned int domain, bus, slot, fn;
	struct pci_dev *found;
	int err = 0;

	if (sscanf(buf, "%x:%x:%x.%x", &domain, &bus, &slot, &fn) != 4 || slot > 0x1f || fn > 7)
		return -EINVAL;
	found = pci_get_domain_bus_and_slot(domain, bus, PCI_DEVFN(slot, fn));
	if (!found)
		return -ENODEV;
	mutex_lock(&lock);
	if (worker) {
		err = -EBUSY;
	} else {
		swap(pdev, found);
	}
	mutex_unlock(&lock);
	pci_dev_put(found);
	return err ? err : n;
}

static ssize_t pages_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%u\n", READ_ONCE(npages));
}

static ssize_t pages_store(struct kobject *k, struct kobj_attribute *a, const char *buf, size_t n)
{
	unsigned int v;
	int err = kstrtouint(buf, 0, &v);

	if (err)
		return err;
	if (!v || v > MAX_PAGES)
		return -ERANGE;
	mutex_lock(&lock);
	if (worker)
		err = -EBUSY;
	else
		npages = v;
	mutex_unlock(&lock);
	return err ? err : n;
}

static ssize_t mode_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%s\n", READ_ONCE(cpu_mode) ? "cpu" : "dma");
}

static ssize_t mode_store(struct kobject *k, struct kobj_attribute *a, const char *buf, size_t n)
{
	bool cpu;
	int err = 0;

	if (sysfs_streq(buf, "cpu"))
		cpu = true;
	else if (sysfs_streq(buf, "dma"))
		cpu = false;
	else
		return -EINVAL;
	mutex_lock(&lock);
	if (worker)
		err = -EBUSY;
	else
		cpu_mode = cpu;
	mutex_unlock(&lock);
	return err ? err : n;
}

static ssize_t running_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%d\n", READ_ONCE(worker) != NULL);
}

static ssize_t running_store(struct kobject *k, struct kobj_attribute *a, const char *buf, size_t n)
{
	bool want;
	int err = kstrtobool(buf, &want);

	if (err)
		return err;
	mutex_lock(&lock);
	if (want && !worker)
		err = start();
	else if (!want)
		stop();
	mutex_unlock(&lock);
	return err ? err : n;
}

static ssize_t rounds_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&rounds));
}

static ssize_t ns_per_page_show(struct kobject *k, struct kobj_attribute *a, char *buf)
{
	u64 pages = (u64)atomic64_read(&rounds) * READ_ONCE(npages);

	return sysfs_emit(buf, "%llu\n", pages ? div64_u64(atomic64_read(&busy_ns), pages) : 0);
}

static struct kobj_attribute device_attr = __ATTR_WO(device);
static struct kobj_attribute pages_attr = __ATTR_RW(pages);
static struct kobj_attribute mode_attr = __ATTR_RW(mode);
static struct kobj_attribute running_attr = __ATTR_RW(running);
static struct kobj_attribute rounds_attr = __ATTR_RO(rounds);
static struct kobj_attribute ns_per_page_attr = __ATTR_RO(ns_per_page);

static struct attribute *attrs[] = {
	&device_attr.attr, &pages_attr.attr,  &mode_attr.attr,	      &running_attr.attr,
	&rounds_attr.attr, &ns_per_page_attr.attr, NULL,
};

static const struct attribute_group group = { .attrs = attrs };
static struct kobject *kobj;

static int __init exercise_init(void)
{
	int err;

	kobj = kobject_create_and_add("vfmig_exercise", kernel_kobj);
	if (!kobj)
		return -ENOMEM;
	err = sysfs_create_group(kobj, &group);
	if (err)
		kobject_put(kobj);
	return err;
}

static void __exit exercise_exit(void)
{
	kobject_put(kobj);
	stop();
	pci_dev_put(pdev);
}

module_init(exercise_init);
module_exit(exercise_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("vfmig test load: DMA map/unmap rounds over a known working set");
